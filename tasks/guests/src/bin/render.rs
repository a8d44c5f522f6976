//! `render`: an SVG renderer (resvg) that writes its results to files, as real batch programs do.
//!
//! Args: `[SCALE]`, a zoom factor (default 1). Renders every `/input/<name>.svg`, in byte order
//! of names, to `/output/<name>.png` (RGBA, the SVG's size times SCALE, rounded up), and prints
//! one line per file, `name.png WIDTHxHEIGHT BYTES`. Text is not rendered (no fonts in the
//! sandbox).
//! If an input cannot be read or parsed, or a PNG cannot be written: a message naming the file on
//! stderr and exit code 2.

use std::path::Path;

use resvg::{tiny_skia, usvg};

fn fail(what: &Path, why: impl std::fmt::Display) -> ! {
    eprintln!("render: {}: {why}", what.display());
    std::process::exit(2);
}

fn main() {
    let scale: f32 = match std::env::args().nth(1) {
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("render: scale {text:?} is not a number");
            std::process::exit(2)
        }),
        None => 1.0,
    };
    let input = Path::new("/input");
    let mut names: Vec<String> = std::fs::read_dir(input)
        .unwrap_or_else(|e| fail(input, e))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".svg"))
        .collect();
    names.sort();
    let options = usvg::Options::default();
    for name in names {
        let path = input.join(&name);
        let data = std::fs::read(&path).unwrap_or_else(|e| fail(&path, e));
        let tree = usvg::Tree::from_data(&data, &options).unwrap_or_else(|e| fail(&path, e));
        let size = tree
            .size()
            .to_int_size()
            .scale_by(scale)
            .unwrap_or_else(|| fail(&path, "empty or too large at this scale"));
        let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
            .unwrap_or_else(|| fail(&path, "image too large"));
        resvg::render(
            &tree,
            tiny_skia::Transform::from_scale(scale, scale),
            &mut pixmap.as_mut(),
        );
        let png = pixmap.encode_png().unwrap_or_else(|e| fail(&path, e));
        let stem = name.trim_end_matches(".svg");
        let out = Path::new("/output").join(format!("{stem}.png"));
        std::fs::write(&out, &png).unwrap_or_else(|e| fail(&out, e));
        println!("{stem}.png {}x{} {}", size.width(), size.height(), png.len());
    }
}

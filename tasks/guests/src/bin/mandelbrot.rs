//! `mandelbrot`: renders the Mandelbrot set as a greyscale image.
//!
//! Args: `[width] [height] [max_iter]`, defaults 256 192 256, each at least 1 (and the image
//! at most 2^26 pixels). Pixel (x, y) samples its centre on the plane re in [-2.5, 1],
//! im in [-1, 1] (row 0 at im = +1) and iterates z = z^2 + c in f64 until |z| > 2 or
//! max_iter iterations.
//! Output: a binary PGM on stdout (`P5`, maxval 255), each pixel the escape iteration count
//! scaled to 0..=255 (255 for points that never escaped).
//! Bad arguments: a message on stderr and exit code 2.

use std::io::Write;

fn usage(msg: &str) -> ! {
    eprintln!("mandelbrot: {msg}\nusage: mandelbrot [width] [height] [max_iter]   (each >= 1)");
    std::process::exit(2);
}

fn arg_u32(arg: Option<std::ffi::OsString>, what: &str, default: u32) -> u32 {
    match arg {
        None => default,
        Some(a) => match a.to_str().and_then(|s| s.parse().ok()) {
            Some(v) if v >= 1 => v,
            _ => usage(&format!("bad {what}: {a:?}")),
        },
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let width = arg_u32(args.next(), "width", 256);
    let height = arg_u32(args.next(), "height", 192);
    let max_iter = arg_u32(args.next(), "max_iter", 256);
    if args.next().is_some() {
        usage("too many arguments");
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > 1 << 26 {
        usage(&format!("image too large: {width}x{height}"));
    }

    let header = format!("P5\n{width} {height}\n255\n");
    let mut image = Vec::with_capacity(header.len() + pixels as usize);
    image.extend_from_slice(header.as_bytes());
    let (w, h) = (f64::from(width), f64::from(height));
    for py in 0..height {
        let im = 1.0 - 2.0 * (f64::from(py) + 0.5) / h;
        for px in 0..width {
            let re = -2.5 + 3.5 * (f64::from(px) + 0.5) / w;
            let (mut zr, mut zi) = (0.0f64, 0.0f64);
            let mut iter = 0u32;
            while iter < max_iter && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + re;
                zi = 2.0 * zr * zi + im;
                zr = t;
                iter += 1;
            }
            image.push((u64::from(iter) * 255 / u64::from(max_iter)) as u8);
        }
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&image).and_then(|()| out.flush()) {
        eprintln!("mandelbrot: writing the image: {e}");
        std::process::exit(1);
    }
}

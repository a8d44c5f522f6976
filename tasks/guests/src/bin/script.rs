//! `script`: an interpreter (Rhai, a small embedded scripting language written in Rust) that
//! runs a script given as an input file, as a batch pipeline runs Python or Lua over its inputs.
//!
//! Args: `SCRIPT [ARG]...`. Runs `/input/SCRIPT`; the script sees its arguments as the array
//! `ARGS` (strings) and may read any other input file with `read_input(name)`, which returns
//! the file's text. `print` writes a line to stdout, `debug` to stderr. Output: what the script
//! prints, then, if it evaluates to something other than `()`, that value on a line of its own.
//! A missing script or a script error: a message naming it on stderr and exit code 1.

use rhai::{Array, Dynamic, Engine, EvalAltResult, Scope};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("script: usage: script SCRIPT [ARG]...");
        std::process::exit(1);
    };
    let path = format!("/input/{name}");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        eprintln!("script: cannot read {path}: {error}");
        std::process::exit(1);
    });
    let mut engine = Engine::new();
    // Deep recursion is the script's business, within the sandbox's own stack and fuel.
    engine.set_max_call_levels(10_000);
    engine.register_fn(
        "read_input",
        |name: &str| -> Result<String, Box<EvalAltResult>> {
            std::fs::read_to_string(format!("/input/{name}"))
                .map_err(|error| format!("cannot read /input/{name}: {error}").into())
        },
    );
    engine.on_debug(|text, _, _| eprintln!("{text}"));
    let mut scope = Scope::new();
    let arguments: Array = args.map(Dynamic::from).collect();
    scope.push("ARGS", arguments);
    match engine.eval_with_scope::<Dynamic>(&mut scope, &source) {
        Ok(value) if value.is_unit() => {}
        Ok(value) => println!("{value}"),
        Err(error) => {
            eprintln!("script: {path}: {error}");
            std::process::exit(1);
        }
    }
}

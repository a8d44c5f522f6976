//! `pi`: Monte Carlo estimate of pi, fully determined by its arguments.
//!
//! Args: `[samples] [seed]`; samples defaults to 1_000_000 and must be at least 1, seed
//! defaults to the number of samples. Points are drawn from an inline SplitMix64 generator,
//! two u64 per point, each turned into an f64 in [0, 1) from its top 53 bits; a point is
//! inside when `x*x + y*y < 1.0`.
//! Output: one line of JSON, `{"samples":N,"inside":M,"pi":E}` with E = 4*M/N to 9 decimals.
//! Bad arguments: a message on stderr and exit code 2.

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "pi: {msg}\nusage: pi [samples] [seed]   (samples >= 1; both unsigned 64-bit integers)"
    );
    std::process::exit(2);
}

fn arg_u64(arg: Option<String>, what: &str) -> Option<u64> {
    arg.map(|a| {
        a.parse()
            .unwrap_or_else(|_| usage(&format!("bad {what}: {a:?}")))
    })
}

fn main() {
    let mut args = std::env::args_os().skip(1).map(|a| {
        a.into_string()
            .unwrap_or_else(|a| usage(&format!("argument is not UTF-8: {a:?}")))
    });
    let samples = arg_u64(args.next(), "samples").unwrap_or(1_000_000);
    let seed = arg_u64(args.next(), "seed").unwrap_or(samples);
    if args.next().is_some() {
        usage("too many arguments");
    }
    if samples == 0 {
        usage("samples must be at least 1");
    }

    let mut rng = SplitMix64(seed);
    let mut inside: u64 = 0;
    for _ in 0..samples {
        let x = rng.next_f64();
        let y = rng.next_f64();
        if x * x + y * y < 1.0 {
            inside += 1;
        }
    }
    let pi = 4.0 * inside as f64 / samples as f64;
    println!("{{\"samples\":{samples},\"inside\":{inside},\"pi\":{pi:.9}}}");
}

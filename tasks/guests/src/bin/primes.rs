//! `primes`: counts the primes up to n with a sieve of Eratosthenes.
//!
//! Args: `[n]`, default 1_000_000 (the sieve takes n+1 bytes of memory).
//! Output: one line of JSON, `{"n":N,"count":C,"largest":L}`: C primes p with p <= N, the
//! largest of them L (`null` when there is none, i.e. N < 2).
//! Bad arguments: a message on stderr and exit code 2.

fn usage(msg: &str) -> ! {
    eprintln!("primes: {msg}\nusage: primes [n]   (n an unsigned integer)");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let n: usize = match args.next() {
        None => 1_000_000,
        Some(a) => match a.to_str().and_then(|s| s.parse().ok()) {
            Some(n) if n < usize::MAX => n,
            _ => usage(&format!("bad n: {a:?}")),
        },
    };
    if args.next().is_some() {
        usage("too many arguments");
    }

    // composite[i] is true once i is known not to be prime.
    let mut composite = vec![false; n + 1];
    let mut i = 2;
    while i * i <= n {
        if !composite[i] {
            let mut j = i * i;
            while j <= n {
                composite[j] = true;
                j += i;
            }
        }
        i += 1;
    }
    let mut count: u64 = 0;
    let mut largest = None;
    for (p, &c) in composite.iter().enumerate().skip(2) {
        if !c {
            count += 1;
            largest = Some(p);
        }
    }
    let largest = largest.map_or_else(|| "null".to_string(), |p| p.to_string());
    println!("{{\"n\":{n},\"count\":{count},\"largest\":{largest}}}");
}

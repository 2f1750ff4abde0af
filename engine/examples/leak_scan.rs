//! The leak scan's search by hand, for benchmarks: `leak_scan PATTERNS IMAGE...` searches each
//! image for every line of PATTERNS (as a `forbid_files` file is read) with the scan's matcher
//! and prints one JSON line per image: bytes, bytes read (not holes), seconds, occurrences.
//! Patterns are never printed.

use std::path::PathBuf;

use engine::steps::sanitize::matcher::{Matcher, CHUNK};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: leak_scan PATTERNS IMAGE...");
        std::process::exit(2);
    }
    let text = std::fs::read(&args[1]).expect("PATTERNS");
    let patterns: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .collect();
    let matcher = Matcher::new(&patterns);
    for image in &args[2..] {
        let path = PathBuf::from(image);
        let scan = matcher
            .scan_file(&path, CHUNK, &|| false)
            .expect("IMAGE")
            .expect("not cancelled");
        println!(
            "{{\"image\": {:?}, \"patterns\": {}, \"bytes\": {}, \"data_bytes\": {}, \"seconds\": {:.4}, \"occurrences\": {}}}",
            image,
            patterns.len(),
            scan.bytes,
            scan.data_bytes,
            scan.seconds,
            scan.found.total
        );
    }
}

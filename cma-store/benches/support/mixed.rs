//! The mixed workspace the snapshot benchmark and the profiling example share.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Size of the data files.
pub const DATA_FILE: usize = 16 << 20;

/// A mixed workspace of about `total` bytes: many small source-like text files (40%), binary
/// files of 10 KB to 4 MB (30%), 16 MiB data files of random bytes (20%; the incremental bench
/// edits one of them) and one file that is mostly zeros with some text (10%).
pub fn mixed_workspace(dir: &Path, total: u64) {
    let mut rng = StdRng::seed_from_u64(1);
    let words = [
        "fn", "let", "mut", "impl", "pub", "struct", "self", "return", "match", "=>", "{", "}",
        "(", ")", ";", "\n", "    ", "Result", "Option", "value", "error", "config",
    ];
    let mut text_left = total * 4 / 10;
    let mut i = 0u64;
    while text_left > 0 {
        let d = dir.join(format!("src/m{}/s{}", i % 50, (i / 50) % 20));
        std::fs::create_dir_all(&d).unwrap();
        let n = rng.random_range(200..40_000usize).min(text_left as usize);
        let mut s = String::with_capacity(n + 16);
        while s.len() < n {
            s.push_str(words[rng.random_range(0..words.len())]);
            s.push(' ');
        }
        std::fs::write(d.join(format!("f{i}.rs")), &s).unwrap();
        text_left = text_left.saturating_sub(s.len() as u64);
        i += 1;
    }
    let mut bin_left = total * 3 / 10;
    let mut j = 0;
    while bin_left > 0 {
        let d = dir.join(format!("assets/a{}", j % 20));
        std::fs::create_dir_all(&d).unwrap();
        let n = rng
            .random_range(10_000..4_000_000usize)
            .min(bin_left as usize);
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        std::fs::write(d.join(format!("b{j}.bin")), &data).unwrap();
        bin_left -= n as u64;
        j += 1;
    }
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut data_left = total * 2 / 10;
    let mut k = 0;
    while data_left > 0 {
        let n = DATA_FILE.min(data_left as usize);
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        std::fs::write(data_dir.join(format!("part-{k:03}.bin")), &data).unwrap();
        data_left -= n as u64;
        k += 1;
    }
    let mut sparse = vec![0u8; (total / 10) as usize];
    for k in (0..sparse.len()).step_by(1 << 20) {
        let end = (k + 4096).min(sparse.len());
        sparse[k..end].fill(b'x');
    }
    std::fs::write(dir.join("mostly-zeros.img"), &sparse).unwrap();
}

//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/*`) through the same entry points
//! the `cargo fuzz` targets call, so a regression a fuzzer once found fails CI on stable Rust.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in tessera::fuzzing::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            target(&data);
            replayed += 1;
        }
        assert!(replayed > 0, "corpus {} is empty", dir.display());
        println!("{name}: {replayed} inputs replayed");
    }
}

//! Golden files: compare a test's output with a file, or rewrite the file.

use std::path::Path;

/// Compares `actual` with the contents of the file at `path`.
///
/// With `UPDATE_EXPECT=1` in the environment it writes `actual` to the file
/// instead (creating it and its directory), so that a changed output is
/// accepted by rerunning the tests. Without it a missing file fails with a
/// message that says to run with `UPDATE_EXPECT=1`, and a different file
/// fails with both texts.
pub fn expect_file(path: impl AsRef<Path>, actual: &str) {
    let path = path.as_ref();
    if std::env::var("UPDATE_EXPECT").is_ok_and(|value| value == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        }
        std::fs::write(path, actual).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; run with UPDATE_EXPECT=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (run with UPDATE_EXPECT=1 to accept the new output)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

//! Small pieces of the text that people read.

/// `n` with its noun: `"1 file"`, `"2 files"`, `"0 files"`.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        assert_eq!(super::count(0, "file", "files"), "0 files");
        assert_eq!(super::count(1, "file", "files"), "1 file");
        assert_eq!(super::count(2, "FIFO", "FIFOs"), "2 FIFOs");
    }
}

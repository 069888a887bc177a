//! Holes in sparse files: where a file's data is, found with `lseek(SEEK_DATA)` and
//! `lseek(SEEK_HOLE)`, so that a sender can skip holes instead of reading gigabytes of
//! zeros, and a receiver can seek over them instead of writing them.
//!
//! The contract is conservative: every byte *outside* the ranges [`data_ranges`] yields
//! read as zero when they were looked up, but a range may also hold zeros (filesystems
//! report data in whole blocks or pages, and a filesystem without `SEEK_DATA` reports the
//! whole file as one range). Reading the ranges and treating the rest as zeros therefore
//! always reproduces the file.
//!
//! The receiving side needs nothing from here but [`allocated_bytes`] in its tests: it
//! seeks over the holes while writing and calls `File::set_len` at the end, so that a
//! trailing hole is kept too.

use std::fs::{File, Metadata};
use std::io;
use std::iter::FusedIterator;
use std::os::unix::fs::MetadataExt;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// A data segment of a file: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataRange {
    /// Where the segment starts, in bytes from the start of the file.
    pub offset: u64,
    /// Its length in bytes; never 0.
    pub len: u64,
}

impl DataRange {
    /// The offset just past the segment.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The bytes the filesystem has allocated for the file (`st_blocks * 512`).
///
/// Less than the size for a file with holes; it may also be less for a dense file on a
/// compressing filesystem or with data stored inline in the inode, and more for a file
/// with blocks preallocated past its end.
pub fn allocated_bytes(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Whether the file may have holes worth looking for: it has fewer allocated bytes than
/// its size. A cheap check on metadata already in hand, so that dense files (nearly all
/// of them) skip the seeks of [`data_ranges`].
///
/// False negatives are possible but harmless (a file with holes *and* blocks preallocated
/// past its end is then read densely); false positives (compressed or inline data) only
/// cost the seeks.
pub fn may_be_sparse(meta: &Metadata) -> bool {
    meta.is_file() && allocated_bytes(meta) < meta.len()
}

/// The data ranges of `file` in its first `size` bytes, in order, found with
/// `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)`: two system calls per range, and no memory
/// beyond the iterator itself, however many extents the file has.
///
/// - Ranges are exact as the filesystem reports them (no holes are coalesced), never
///   empty, never overlapping, and clipped to `size`. A trailing hole gives no range, so
///   a file that is all hole gives none at all.
/// - A filesystem that does not support the seeks (`EINVAL`, `ENOTSUP`, `EOPNOTSUPP`)
///   gives one range covering the rest, as if the file were dense.
/// - If the file shrinks below `size` meanwhile, the ranges stop at its new end; if it
///   grows, the growth is ignored. The caller, reading the data, sees such changes anyway.
/// - Any other error is yielded once, and ends the iteration.
///
/// The file's offset is left unspecified (it is moved by the seeks): read the ranges with
/// positioned reads (`FileExt::read_at`) or seek before each read.
pub fn data_ranges(file: &File, size: u64) -> DataRanges<'_> {
    DataRanges {
        file,
        size,
        pos: 0,
        done: size == 0,
    }
}

/// The data ranges of `file` from offset `from` up to `size` bytes: as [`data_ranges`],
/// for a reader that resumes where it stopped.
pub fn data_ranges_from(file: &File, from: u64, size: u64) -> DataRanges<'_> {
    DataRanges {
        file,
        size,
        pos: from,
        done: from >= size,
    }
}

/// The iterator of [`data_ranges`].
#[derive(Debug)]
pub struct DataRanges<'a> {
    file: &'a File,
    size: u64,
    /// Where the next range is looked for.
    pos: u64,
    done: bool,
}

/// Whether an error of `lseek(SEEK_DATA / SEEK_HOLE)` means the filesystem does not
/// support them.
fn unsupported(e: Errno) -> bool {
    e == Errno::INVAL || e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

impl DataRanges<'_> {
    fn step(&mut self) -> io::Result<Option<DataRange>> {
        let data = match rustix::fs::seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(d) => d,
            // No data at or after `pos`: the rest is a (trailing) hole, or the file has
            // shrunk below `pos`.
            Err(Errno::NXIO) => return Ok(None),
            Err(e) if unsupported(e) => return Ok(Some(self.rest())),
            Err(e) => return Err(e.into()),
        };
        if data >= self.size {
            return Ok(None);
        }
        let hole = match rustix::fs::seek(self.file, SeekFrom::Hole(data)) {
            Ok(h) => h,
            // The file shrank below `data` between the two seeks.
            Err(Errno::NXIO) => return Ok(None),
            Err(e) if unsupported(e) => return Ok(Some(self.rest())),
            Err(e) => return Err(e.into()),
        };
        // A hole found *at* `data` means the data was just punched out; one byte (which
        // reads as zero) keeps the iteration moving instead of asking again forever.
        let end = hole.max(data + 1).min(self.size);
        self.pos = end;
        Ok(Some(DataRange {
            offset: data,
            len: end - data,
        }))
    }

    /// Everything from `pos` to `size` as one range, and the end of the iteration.
    fn rest(&mut self) -> DataRange {
        let r = DataRange {
            offset: self.pos,
            len: self.size - self.pos,
        };
        self.pos = self.size;
        r
    }
}

impl Iterator for DataRanges<'_> {
    type Item = io::Result<DataRange>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.size {
            self.done = true;
            return None;
        }
        match self.step() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for DataRanges<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::time::Instant;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// Makes `path` a file of `size` bytes holding `writes` (offset, bytes) and holes
    /// everywhere else.
    fn sparse_file(path: &Path, size: u64, writes: &[(u64, &[u8])]) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        f.set_len(size).unwrap();
        for (off, bytes) in writes {
            f.write_all_at(bytes, *off).unwrap();
        }
        f
    }

    fn ranges(f: &File, size: u64) -> Vec<DataRange> {
        data_ranges(f, size).collect::<io::Result<_>>().unwrap()
    }

    /// The contract: ranges in order, non-empty, disjoint, within `size`; every write
    /// inside one range; and, since filesystems report whole blocks or pages (up to a
    /// 2 MiB huge page on tmpfs), no more than `slack` bytes of ranges around each write.
    fn check(ranges: &[DataRange], size: u64, writes: &[(u64, &[u8])], slack: u64) {
        let mut prev_end = 0;
        for r in ranges {
            assert!(r.len > 0, "{ranges:?}");
            assert!(r.offset >= prev_end, "not ordered and disjoint: {ranges:?}");
            assert!(r.end() <= size, "past {size}: {ranges:?}");
            prev_end = r.end();
        }
        for (off, bytes) in writes {
            let end = off + bytes.len() as u64;
            assert!(
                ranges.iter().any(|r| r.offset <= *off && end <= r.end()),
                "write at {off}..{end} not covered by {ranges:?}"
            );
        }
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        let written: u64 = writes.iter().map(|(_, b)| b.len() as u64).sum();
        assert!(
            total <= written + slack * writes.len() as u64,
            "{total} bytes of ranges for {written} written: {ranges:?}"
        );
    }

    #[test]
    fn five_gib_file_with_eight_bytes_at_three_gib() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let size = 5 * GIB;
        let writes: &[(u64, &[u8])] = &[(3 * GIB, b"8 bytes!")];
        let f = sparse_file(&dir.path().join("big"), size, writes);
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), size);
        assert!(may_be_sparse(&meta));
        assert!(
            allocated_bytes(&meta) <= 4 * MIB,
            "{}",
            allocated_bytes(&meta)
        );

        let rs = ranges(&f, size);
        assert_eq!(rs.len(), 1, "{rs:?}");
        check(&rs, size, writes, 2 * MIB);
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 3 * GIB).unwrap();
        assert_eq!(&buf, b"8 bytes!");
        // Nothing here reads 5 GiB: well under a second on any filesystem with holes.
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn data_at_start_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let size = GIB + 3;
        let writes: &[(u64, &[u8])] = &[(0, b"head"), (size - 4, b"tail")];
        let f = sparse_file(&dir.path().join("f"), size, writes);
        assert!(may_be_sparse(&f.metadata().unwrap()));
        let rs = ranges(&f, size);
        assert_eq!(rs.len(), 2, "{rs:?}");
        assert_eq!(rs[0].offset, 0);
        assert_eq!(rs[1].end(), size, "the last range is clipped to the size");
        check(&rs, size, writes, 2 * MIB);
    }

    #[test]
    fn several_ranges_and_a_trailing_hole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 * MIB;
        let block = vec![7u8; 10_000];
        let writes: Vec<(u64, &[u8])> = (0..8).map(|i| (i * 8 * MIB + 5, &block[..])).collect();
        let writes = &writes[..7]; // the last 8 MiB stay a hole
        let f = sparse_file(&dir.path().join("f"), size, writes);
        let rs = ranges(&f, size);
        // A filesystem that allocates 2 MiB pages (tmpfs with huge pages) would still
        // keep these 8 MiB apart.
        assert_eq!(rs.len(), 7, "{rs:?}");
        check(&rs, size, writes, 2 * MIB);
        assert!(rs[6].end() <= 49 * MIB, "{rs:?}");
    }

    #[test]
    fn dense_file_is_one_range_and_not_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300 * KIB).map(|i| (i % 251) as u8 + 1).collect();
        let path = dir.path().join("dense");
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let meta = f.metadata().unwrap();
        assert!(
            !may_be_sparse(&meta),
            "{} allocated",
            allocated_bytes(&meta)
        );
        assert!(allocated_bytes(&meta) >= data.len() as u64);
        let size = data.len() as u64;
        assert_eq!(
            ranges(&f, size),
            [DataRange {
                offset: 0,
                len: size
            }]
        );
    }

    #[test]
    fn empty_file_has_no_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let f = sparse_file(&dir.path().join("empty"), 0, &[]);
        let meta = f.metadata().unwrap();
        assert!(!may_be_sparse(&meta));
        assert_eq!(allocated_bytes(&meta), 0);
        assert_eq!(ranges(&f, 0), []);
    }

    #[test]
    fn file_that_is_all_hole_has_no_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * GIB + 1;
        let f = sparse_file(&dir.path().join("hole"), size, &[]);
        let meta = f.metadata().unwrap();
        assert!(may_be_sparse(&meta));
        assert_eq!(allocated_bytes(&meta), 0);
        assert_eq!(ranges(&f, size), []);
    }

    #[test]
    fn size_clips_and_a_shrunk_file_ends_early() {
        let dir = tempfile::tempdir().unwrap();
        let size = 16 * MIB;
        let writes: &[(u64, &[u8])] = &[(MIB, b"one"), (10 * MIB, b"two")];
        let f = sparse_file(&dir.path().join("f"), size, writes);
        // Asked for less than the file: the second range is not reached, the first is cut.
        let rs = ranges(&f, MIB + 2);
        assert_eq!(
            rs,
            [DataRange {
                offset: MIB,
                len: 2
            }]
        );
        // Asked for more than the file (it shrank since its size was read): the ranges
        // stop at its end.
        f.set_len(2 * MIB).unwrap();
        let rs = ranges(&f, size);
        assert_eq!(rs.len(), 1, "{rs:?}");
        assert!(rs[0].offset <= MIB && rs[0].end() <= 2 * MIB, "{rs:?}");
    }

    #[test]
    fn without_seek_data_support_the_whole_file_is_one_range() {
        // procfs files answer SEEK_DATA with EINVAL, like a filesystem without support.
        let f = File::open("/proc/self/status").unwrap();
        assert_eq!(
            ranges(&f, 100),
            [DataRange {
                offset: 0,
                len: 100
            }]
        );
        assert_eq!(ranges(&f, 0), []);
    }

    #[test]
    fn an_error_is_yielded_once_then_the_iterator_ends() {
        // A FIFO cannot seek at all: ESPIPE, which is an error, not "unsupported".
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Read and write, so that opening does not wait for a writer.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut it = data_ranges(&f, 10);
        let err = it.next().unwrap().unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(Errno::SPIPE.raw_os_error()),
            "{err}"
        );
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }
}

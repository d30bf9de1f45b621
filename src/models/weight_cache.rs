//! Packed weights kept on disk between runs.
//!
//! Packing (and quantizing) a checkpoint's linear layers for the CPU kernels is most of
//! loading it: GPT-2 spent ~0.3 s of a ~0.4 s load copying the weights out of the
//! safetensors file, packing them and having the kernel zero fresh pages for them. So the
//! first load writes every packed layer to a cache file, and later loads memory-map that
//! file and convert nothing: the packed arrays are read straight from the page cache.
//!
//! A file is named by what it was made from: the checkpoint's files (path, size and
//! modification time), the packed layout and this format's version. An edited checkpoint
//! or a new layout therefore misses and is packed again; a file that does not read back
//! (truncated, damaged, another format) is a miss too and gets replaced. Files are written
//! under a temporary name, synced and renamed, so a reader never sees half of one. The
//! cache is an optimization only: when it cannot be read or written, loading packs as
//! before.
//!
//! File layout: the arrays, each at an offset that is a multiple of 64; a JSON index of
//! them; the index's length (u64, little-endian); `MAGIC`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// Bump whenever a packed layout changes, so that older files miss.
const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"LLMXPAK1";
/// Arrays start on cache lines, as the kernels' aligned loads need.
const ALIGN: usize = 64;
const FOOTER: usize = 16;

/// Plain numbers that every bit pattern forms, without padding: arrays of them can be read
/// straight from a file's bytes.
///
/// # Safety
/// Implementors are `Copy`, contain no pointers or padding, accept any bits, and have a
/// size that is a multiple of their alignment, which is at most `ALIGN`.
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: every bit pattern is some f32.
unsafe impl Plain for f32 {}

/// An array of `T`, owned or memory-mapped from a cache file.
pub(crate) enum Slab<T: Plain> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
        values: PhantomData<T>,
    },
}

impl<T: Plain> Slab<T> {
    /// The array's bytes, as they are written to a file.
    pub fn as_bytes(&self) -> &[u8] {
        bytes_of(self)
    }
}

/// The bytes of `values`, as they are written to a file.
pub(crate) fn bytes_of<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so every byte of the array is initialized.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

impl<T: Plain> Deref for Slab<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Slab::Owned(values) => values,
            // SAFETY: `Found::slab` checked that the range lies inside the mapping and is
            // aligned for `T`, and `T: Plain` accepts any bytes; the mapping lives as long as
            // `map`, and cache files are replaced by rename, never truncated in place.
            Slab::Mapped {
                map, offset, len, ..
            } => unsafe { std::slice::from_raw_parts(map.as_ptr().add(*offset).cast(), *len) },
        }
    }
}

impl<T: Plain> From<Vec<T>> for Slab<T> {
    fn from(values: Vec<T>) -> Self {
        Slab::Owned(values)
    }
}

impl<T: Plain> Clone for Slab<T> {
    fn clone(&self) -> Self {
        match self {
            Slab::Owned(values) => Slab::Owned(values.clone()),
            Slab::Mapped {
                map, offset, len, ..
            } => Slab::Mapped {
                map: Arc::clone(map),
                offset: *offset,
                len: *len,
                values: PhantomData,
            },
        }
    }
}

impl<T: Plain> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Slab::Owned(_) => "owned",
            Slab::Mapped { .. } => "mapped",
        };
        write!(
            f,
            "Slab({kind}, {} x {})",
            self.len(),
            std::any::type_name::<T>()
        )
    }
}

/// What the index says of one packed weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The packed layout, e.g. `f32` or `q8`.
    kind: String,
    out_dim: usize,
    in_dim: usize,
    /// (offset, bytes) of each array.
    arrays: Vec<(usize, usize)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: u32,
    entries: HashMap<String, Entry>,
}

/// The cache file of one checkpoint in one packed layout.
#[derive(Debug)]
pub struct WeightCache {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Made by an earlier load.
    Found {
        map: Arc<Mmap>,
        entries: HashMap<String, Entry>,
    },
    /// Being written by this load; `None` once committed or after a failed write.
    Writing(Mutex<Option<Writer>>),
}

impl WeightCache {
    /// The cache file in `dir` for the checkpoint `files` packed as `layout`: read back if an
    /// earlier load made it, else started. `None` when neither can be done.
    pub fn open(dir: &Path, files: &[PathBuf], layout: &str) -> Option<Self> {
        let name = format!("{:016x}", key(files, layout)?);
        let path = dir.join(format!("{name}.llmx-packed"));
        if let Some(state) = read(&path) {
            return Some(WeightCache { state });
        }
        fs::create_dir_all(dir).ok()?;
        remove_stale_temporaries(dir, &name);
        // One temporary file per writer, even for loads of one checkpoint at the same time.
        static WRITERS: AtomicUsize = AtomicUsize::new(0);
        let writer = WRITERS.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{name}.{}-{writer}.tmp", std::process::id()));
        let file = File::create(&temp).ok()?;
        let writer = Writer {
            file: BufWriter::with_capacity(1 << 20, file),
            temp,
            path,
            written: 0,
            entries: HashMap::new(),
        };
        Some(WeightCache {
            state: State::Writing(Mutex::new(Some(writer))),
        })
    }

    /// Whether the file was made by an earlier load (rather than being written now).
    pub fn was_found(&self) -> bool {
        matches!(self.state, State::Found { .. })
    }

    /// The arrays of the weight `name`, if the file holds it packed as `kind` with these
    /// dimensions.
    pub(crate) fn find(
        &self,
        name: &str,
        kind: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Option<Found<'_>> {
        let State::Found { map, entries } = &self.state else {
            return None;
        };
        let entry = entries.get(name)?;
        (entry.kind == kind && entry.out_dim == out_dim && entry.in_dim == in_dim).then_some(
            Found {
                map,
                arrays: &entry.arrays,
            },
        )
    }

    /// The kind the weight `name` is held as, if the file holds it.
    pub(crate) fn kind(&self, name: &str) -> Option<&str> {
        match &self.state {
            State::Found { entries, .. } => entries.get(name).map(|entry| entry.kind.as_str()),
            State::Writing(_) => None,
        }
    }

    /// Adds the weight `name`, packed as `kind` into `arrays`, to the file being written.
    /// A failed write abandons the file; loading goes on.
    pub(crate) fn keep(
        &self,
        name: &str,
        kind: &str,
        out_dim: usize,
        in_dim: usize,
        arrays: &[&[u8]],
    ) {
        let State::Writing(writer) = &self.state else {
            return;
        };
        let mut slot = writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(writer) = slot.as_mut() {
            if writer.keep(name, kind, out_dim, in_dim, arrays).is_err() {
                *slot = None;
            }
        }
    }

    /// Finishes the file of a first load, for later loads to map. Best effort: a file that
    /// cannot be finished is removed.
    pub fn commit(&self) {
        if let State::Writing(writer) = &self.state {
            let mut slot = writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(writer) = slot.take() {
                let _ = writer.commit();
            }
        }
    }
}

/// A weight's arrays in a mapped file.
pub(crate) struct Found<'a> {
    map: &'a Arc<Mmap>,
    arrays: &'a [(usize, usize)],
}

impl Found<'_> {
    /// Array `index` as `len` values of `T`, if it is exactly that.
    pub fn slab<T: Plain>(&self, index: usize, len: usize) -> Option<Slab<T>> {
        let &(offset, bytes) = self.arrays.get(index)?;
        (bytes == len.checked_mul(size_of::<T>())? && offset.is_multiple_of(align_of::<T>())).then(
            || Slab::Mapped {
                map: Arc::clone(self.map),
                offset,
                len,
                values: PhantomData,
            },
        )
    }
}

/// The file's name: a hash of what it was made from. `DefaultHasher::new()` hashes the same
/// way in every process of one build; another Rust release may hash differently, which only
/// costs a miss.
fn key(files: &[PathBuf], layout: &str) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    (FORMAT, layout).hash(&mut hasher);
    for file in files {
        let path = fs::canonicalize(file).ok()?;
        let metadata = fs::metadata(&path).ok()?;
        let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        (path, metadata.len(), modified.as_nanos()).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// A writer untouched for this long was killed (a live one writes every array as it is
/// packed).
const STALE: Duration = Duration::from_secs(3600);

/// Removes the temporary files of `name` that a killed load left behind.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if file_name.starts_with(&prefix) && file_name.ends_with(".tmp") && age > Some(STALE) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Maps and checks a finished file; `None` if there is none or it does not read back.
fn read(path: &Path) -> Option<State> {
    let file = File::open(path).ok()?;
    // SAFETY: read-only; cache files are replaced by rename, never modified in place.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let footer = map.len().checked_sub(FOOTER)?;
    if &map[footer + 8..] != MAGIC {
        return None;
    }
    let index_len =
        usize::try_from(u64::from_le_bytes(map[footer..footer + 8].try_into().ok()?)).ok()?;
    let index_start = footer.checked_sub(index_len)?;
    let index: Index = serde_json::from_slice(&map[index_start..footer]).ok()?;
    let arrays_fit =
        index
            .entries
            .values()
            .flat_map(|entry| &entry.arrays)
            .all(|&(offset, bytes)| {
                offset.is_multiple_of(ALIGN)
                    && offset
                        .checked_add(bytes)
                        .is_some_and(|end| end <= index_start)
            });
    (index.format == FORMAT && arrays_fit).then(|| State::Found {
        map: Arc::new(map),
        entries: index.entries,
    })
}

#[derive(Debug)]
struct Writer {
    file: BufWriter<File>,
    temp: PathBuf,
    path: PathBuf,
    written: usize,
    entries: HashMap<String, Entry>,
}

impl Writer {
    fn keep(
        &mut self,
        name: &str,
        kind: &str,
        out_dim: usize,
        in_dim: usize,
        arrays: &[&[u8]],
    ) -> io::Result<()> {
        let mut placed = Vec::with_capacity(arrays.len());
        for bytes in arrays {
            let offset = self.written.next_multiple_of(ALIGN);
            self.file.write_all(&[0; ALIGN][..offset - self.written])?;
            self.file.write_all(bytes)?;
            self.written = offset + bytes.len();
            placed.push((offset, bytes.len()));
        }
        let entry = Entry {
            kind: kind.to_string(),
            out_dim,
            in_dim,
            arrays: placed,
        };
        self.entries.insert(name.to_string(), entry);
        Ok(())
    }

    fn commit(mut self) -> io::Result<()> {
        let index = Index {
            format: FORMAT,
            entries: std::mem::take(&mut self.entries),
        };
        let index = serde_json::to_vec(&index).map_err(io::Error::other)?;
        self.file.write_all(&index)?;
        self.file.write_all(&(index.len() as u64).to_le_bytes())?;
        self.file.write_all(MAGIC)?;
        self.file.flush()?;
        // On disk before it has its name: a crash must not leave a named file with holes.
        self.file.get_ref().sync_all()?;
        fs::rename(&self.temp, &self.path)
    }
}

impl Drop for Writer {
    /// An unfinished (or just renamed) temporary file goes.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);

    // SAFETY: 64 bytes aligned to 64: no padding, any bits.
    unsafe impl Plain for Line {}

    fn lines(count: usize, seed: u8) -> Vec<Line> {
        (0..count)
            .map(|i| Line(std::array::from_fn(|b| (i * 64 + b) as u8 ^ seed)))
            .collect()
    }

    fn checkpoint(dir: &Path) -> Vec<PathBuf> {
        let file = dir.join("model.safetensors");
        fs::write(&file, b"weights").unwrap();
        vec![file]
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Writes a file of two weights and opens it again.
    fn written(dir: &Path, files: &[PathBuf]) -> WeightCache {
        let cache = WeightCache::open(&dir.join("cache"), files, "test").unwrap();
        assert!(!cache.was_found());
        let (a, b, c) = (
            Slab::from(lines(3, 1)),
            Slab::from(lines(1, 2)),
            Slab::from(lines(5, 3)),
        );
        cache.keep("a.weight", "x", 2, 3, &[a.as_bytes(), b.as_bytes()]);
        cache.keep("b.weight+c.weight", "y", 5, 1, &[c.as_bytes()]);
        cache.commit();
        WeightCache::open(&dir.join("cache"), files, "test").unwrap()
    }

    #[test]
    fn kept_arrays_are_mapped_by_the_next_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = checkpoint(dir.path());
        let cache = written(dir.path(), &files);
        assert!(cache.was_found());
        assert_eq!(cache.kind("a.weight"), Some("x"));
        assert_eq!(cache.kind("b.weight+c.weight"), Some("y"));
        assert_eq!(cache.kind("missing"), None);

        let found = cache.find("a.weight", "x", 2, 3).unwrap();
        let a: Slab<Line> = found.slab(0, 3).unwrap();
        let b: Slab<Line> = found.slab(1, 1).unwrap();
        assert!(matches!(a, Slab::Mapped { .. }));
        assert_eq!(&a[..], &lines(3, 1)[..]);
        assert_eq!(&b[..], &lines(1, 2)[..]);
        assert_eq!(&a.clone()[..], &a[..]);
        // Another length, array, kind or shape is not what was kept.
        assert!(found.slab::<Line>(0, 2).is_none());
        assert!(found.slab::<Line>(2, 1).is_none());
        assert!(cache.find("a.weight", "y", 2, 3).is_none());
        assert!(cache.find("a.weight", "x", 3, 2).is_none());
        let c: Slab<Line> = cache
            .find("b.weight+c.weight", "y", 5, 1)
            .unwrap()
            .slab(0, 5)
            .unwrap();
        assert_eq!(&c[..], &lines(5, 3)[..]);
        // Only the finished file is left.
        assert_eq!(files_in(&dir.path().join("cache")).len(), 1);
    }

    #[test]
    fn a_damaged_file_or_a_changed_checkpoint_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let files = checkpoint(dir.path());
        drop(written(dir.path(), &files));
        let file = files_in(&dir.path().join("cache")).remove(0);
        let bytes = fs::read(&file).unwrap();
        let altered = |at: usize| {
            let mut bytes = bytes.clone();
            bytes[at] ^= 0x55;
            bytes
        };
        let end = bytes.len();
        // Cut short; another magic; an index length past the start; a broken index.
        let damaged = [
            bytes[..end - 1].to_vec(),
            bytes[..10].to_vec(),
            Vec::new(),
            altered(end - 1),
            altered(end - 9),
            altered(end - FOOTER - 1),
        ];
        for damaged in damaged {
            fs::write(&file, damaged).unwrap();
            let cache = WeightCache::open(&dir.path().join("cache"), &files, "test").unwrap();
            assert!(!cache.was_found());
        }
        // Another layout, or the checkpoint rewritten, names another file.
        fs::write(&file, &bytes).unwrap();
        assert!(
            !WeightCache::open(&dir.path().join("cache"), &files, "other")
                .unwrap()
                .was_found()
        );
        fs::write(&files[0], b"other weights").unwrap();
        assert!(
            !WeightCache::open(&dir.path().join("cache"), &files, "test")
                .unwrap()
                .was_found()
        );
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_and_writers_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let files = checkpoint(dir.path());
        let cache_dir = dir.path().join("cache");
        let abandoned = WeightCache::open(&cache_dir, &files, "test").unwrap();
        abandoned.keep("a.weight", "x", 1, 1, &[Slab::from(lines(1, 0)).as_bytes()]);
        drop(abandoned);
        assert!(files_in(&cache_dir).is_empty());
        // Two loads of one checkpoint at once: each writes its own file, the last rename wins.
        let first = WeightCache::open(&cache_dir, &files, "test").unwrap();
        let second = WeightCache::open(&cache_dir, &files, "test").unwrap();
        for (cache, seed) in [(&first, 1), (&second, 2)] {
            cache.keep(
                "a.weight",
                "x",
                1,
                1,
                &[Slab::from(lines(4, seed)).as_bytes()],
            );
        }
        second.commit();
        first.commit();
        let cache = WeightCache::open(&cache_dir, &files, "test").unwrap();
        let a: Slab<Line> = cache
            .find("a.weight", "x", 1, 1)
            .unwrap()
            .slab(0, 4)
            .unwrap();
        assert_eq!(&a[..], &lines(4, 1)[..]);
        assert_eq!(files_in(&cache_dir).len(), 1);
    }

    #[test]
    fn a_killed_writers_file_is_removed_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let files = checkpoint(dir.path());
        let cache_dir = dir.path().join("cache");
        drop(WeightCache::open(&cache_dir, &files, "test").unwrap());
        let name = format!("{:016x}", key(&files, "test").unwrap());
        let (stale, live, other) = (
            cache_dir.join(format!("{name}.1-0.tmp")),
            cache_dir.join(format!("{name}.2-0.tmp")),
            cache_dir.join("0000000000000000.3-0.tmp"),
        );
        for file in [&stale, &live, &other] {
            fs::write(file, b"partial").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * STALE;
        for file in [&stale, &other] {
            File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        drop(WeightCache::open(&cache_dir, &files, "test").unwrap());
        assert_eq!(files_in(&cache_dir), vec![other, live]);
    }

    #[test]
    fn no_cache_where_the_folder_cannot_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let files = checkpoint(dir.path());
        // A file where the folder should be.
        assert!(WeightCache::open(&files[0], &files, "test").is_none());
        assert!(WeightCache::open(dir.path(), &[dir.path().join("absent")], "test").is_none());
    }
}

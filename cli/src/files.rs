//! What the file commands share: reading references and sizes, printing sizes and
//! rates, a progress line, and getting a file into place through a partial file.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_core::id::{FileId, Reference};
use cairn_pipeline::{GetOptions, GetStats, GetTarget, LocalFragments, get};
use cairn_store::DiskStore;

/// Seconds since the Unix epoch, for certificates.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a `cairn:f:` reference.
pub fn parse_file_reference(text: &str) -> anyhow::Result<FileId> {
    match text
        .parse::<Reference>()
        .with_context(|| format!("reading the reference {text:?}"))?
    {
        Reference::File(file) => Ok(file),
        Reference::Volume(_) => bail!("{text} is a volume; `cairn get` takes a file (cairn:f:...)"),
    }
}

/// Gets `file` into `out` through a temporary file in the same directory, renamed into
/// place only once everything verified; on any failure the temporary file is removed.
pub fn get_to_file(
    file: FileId,
    out: &Path,
    store: &LocalFragments<DiskStore>,
) -> anyhow::Result<GetStats> {
    write_whole_or_nothing(out, |writer| {
        Ok(get(
            GetTarget::File(file),
            writer,
            store,
            &GetOptions::new(unix_now()),
        )?)
    })
}

/// Writes `out` through `out.cairn-partial`: `fill` writes the bytes, then the file is
/// synced and renamed into place. On any failure the partial file is removed, so `out`
/// is written whole or not at all.
pub fn write_whole_or_nothing<T>(
    out: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".cairn-partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let handle =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut writer = BufWriter::with_capacity(1 << 20, handle);
        let value = fill(&mut writer)?;
        let handle = writer.into_inner().map_err(|e| e.into_error())?;
        handle
            .sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Parses sizes such as `512`, `64KiB`, `500MB`, `16GiB`, `2T`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 500MiB or 16GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `1.5 GiB`-style sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `123.4 MB/s` for people.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    format!(
        "{:.1} MB/s",
        bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
    )
}

/// Progress of a long transfer on standard error, when it is a terminal: a line
/// rewritten at most twice a second.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    /// A progress line for `total` bytes (if known).
    pub fn new(label: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            start: now,
            last: now,
            enabled: io::stderr().is_terminal(),
        }
    }

    /// Counts `bytes` more; redraws at most twice a second.
    pub fn advance(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            let of = self
                .total
                .map(|t| format!(" of {}", human_bytes(t)))
                .unwrap_or_default();
            eprint!(
                "\r{}: {}{of}, {}   ",
                self.label,
                human_bytes(self.done),
                rate(self.done, self.start.elapsed())
            );
        }
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.enabled && self.last != self.start {
            eprintln!();
        }
    }
}

/// A reader that advances a [`Progress`].
pub struct ProgressReader<'a, R> {
    /// The reader.
    pub inner: R,
    /// The progress it advances.
    pub progress: &'a mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_mistakes_are_explained() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn volume_references_are_not_files() {
        let text = format!("cairn:v:{}", cairn_core::id::Id::hash(b"v"));
        assert!(
            parse_file_reference(&text)
                .unwrap_err()
                .to_string()
                .contains("is a volume")
        );
    }
}

//! The compressions a package archive may have: gzip (`ID.tar.gz`, the
//! default) and zstd (`ID.tar.zst`). An archive is read by what its first
//! bytes say it is, not by its name; its name only gives its id.

use std::io::{self, BufRead, Read};

/// A package archive's compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    /// gzip: `ID.tar.gz`, read by every Theseus version.
    #[default]
    Gzip,
    /// zstd: `ID.tar.zst`, faster to unpack.
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 2] = [Codec::Gzip, Codec::Zstd];

    /// The archive file-name suffix, `.tar.gz` or `.tar.zst`.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Gzip => ".tar.gz",
            Codec::Zstd => ".tar.zst",
        }
    }

    /// The codec whose magic bytes `head` starts with.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        if head.starts_with(&ZSTD_MAGIC) {
            Some(Codec::Zstd)
        } else if head.starts_with(&GZIP_MAGIC) {
            Some(Codec::Gzip)
        } else {
            None
        }
    }
}

/// `name` without its archive suffix, and the codec the suffix names;
/// `None` when it has neither suffix.
pub fn split_archive_name(name: &str) -> Option<(&str, Codec)> {
    Codec::ALL
        .into_iter()
        .find_map(|codec| name.strip_suffix(codec.suffix()).map(|stem| (stem, codec)))
}

/// A decompressing reader over an archive of either codec.
pub enum Decoder<R: BufRead> {
    /// gzip, every member (as `gzip -d` reads concatenated members).
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    /// zstd, every frame.
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    /// The decoder for what `reader`'s first bytes say it holds; an error
    /// of kind `InvalidData` when they are neither gzip's nor zstd's.
    pub fn sniff(mut reader: R) -> io::Result<Self> {
        let head = reader.fill_buf()?;
        match Codec::sniff(head) {
            Some(Codec::Gzip) => Ok(Decoder::Gzip(Box::new(
                flate2::bufread::MultiGzDecoder::new(reader),
            ))),
            Some(Codec::Zstd) => Ok(Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(
                reader,
            )?)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither a gzip nor a zstd stream (a package archive is ID.tar.gz or ID.tar.zst)",
            )),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn archives_are_read_by_their_magic_bytes_not_their_names() {
        let text = b"the same bytes either way".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&text[..], 3).unwrap();
        for (bytes, codec) in [(&gz, Codec::Gzip), (&zst, Codec::Zstd)] {
            assert_eq!(Codec::sniff(bytes), Some(codec));
            let mut out = Vec::new();
            Decoder::sniff(&bytes[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, text);
        }
        let err = Decoder::sniff(&b"PK\x03\x04 a zip"[..]).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("neither a gzip nor a zstd"),
            "{err}"
        );
    }

    #[test]
    fn an_archive_name_gives_its_stem_and_codec() {
        assert_eq!(
            split_archive_name("web--1.0.tar.gz"),
            Some(("web--1.0", Codec::Gzip))
        );
        assert_eq!(
            split_archive_name("web--1.0.tar.zst"),
            Some(("web--1.0", Codec::Zstd))
        );
        assert_eq!(split_archive_name("web--1.0.zip"), None);
        assert_eq!(Codec::Zstd.suffix(), ".tar.zst");
    }
}

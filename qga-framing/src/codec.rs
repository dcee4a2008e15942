//! tokio-util codec over the sans-IO [`Decoder`](crate::Decoder).

use std::io;

use bytes::{Bytes, BytesMut};

use crate::{encode_raw, Decoder, Frame, Limits};

/// A tokio-util `Decoder`/`Encoder` for QGA streams.
///
/// Decoding yields [`Frame`]s; limit errors are `Frame::Oversized` items rather than
/// `Err`, because `FramedRead` ends the stream after an error. At end of stream a
/// partial message is dropped. Encoding writes a raw JSON message plus `\n`.
#[derive(Debug, Clone, Default)]
pub struct QgaCodec {
    decoder: Decoder,
}

impl QgaCodec {
    /// A codec with qemu-ga's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        QgaCodec {
            decoder: Decoder::with_limits(limits),
        }
    }
}

impl tokio_util::codec::Decoder for QgaCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        Ok(self.decoder.decode(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        match self.decoder.decode(src) {
            Some(frame) => Ok(Some(frame)),
            None => {
                // A trailing partial message (or bare scalar) can never complete.
                src.clear();
                self.decoder.reset();
                Ok(None)
            }
        }
    }
}

impl tokio_util::codec::Encoder<&[u8]> for QgaCodec {
    type Error = io::Error;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), io::Error> {
        encode_raw(item, false, dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<Bytes> for QgaCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), io::Error> {
        encode_raw(&item, false, dst);
        Ok(())
    }
}

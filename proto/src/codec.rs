//! The gRPC codec of every stagecache service: prost's, except that each message is
//! encoded into room reserved for its whole length at once.
//!
//! tonic starts a call's encode buffer at 8 KiB, and prost writes a message field by field.
//! A 1 MiB chunk of a streamed blob, or a batch of small blobs (up to 16 MiB), therefore
//! grew the buffer by doubling: up to a dozen reallocations per message, each one copying
//! everything written so far into memory the process touched for the first time. Reserving
//! the encoded length first makes that one allocation and one copy of the data. Messages
//! that fit the 8 KiB (every ledger call) are encoded as before.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder};

/// The codec the generated clients and servers use (`codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ReservingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ReservingCodec<T, U> {
    fn default() -> Self {
        ReservingCodec(PhantomData)
    }
}

impl<T, U> Codec for ReservingCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        // tonic's decoder already reserves a message's length from its frame header.
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Encodes a message after reserving its encoded length in the call's buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // `encode` would compute the length a second time only to check the room that was
        // just reserved; an `EncodeBuf` grows anyway, so it cannot run out.
        item.encode_raw(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{BatchUploadItem, BatchUploadRequest, Digest as ProtoDigest};
    use bytes::Bytes;
    use http_body::Body;
    use prost::Message;

    /// The gRPC frames a client sends for `messages`, through the codec's encoder.
    fn frames(messages: Vec<BatchUploadRequest>) -> Vec<u8> {
        let source = futures::stream::iter(messages.into_iter().map(Ok));
        let mut body = std::pin::pin!(tonic::codec::EncodeBody::new_client(
            ReservingCodec::<BatchUploadRequest, BatchUploadRequest>::default().encoder(),
            source,
            None,
            None,
        ));
        let mut out = Vec::new();
        futures::executor::block_on(async {
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                let data = frame.expect("encoded").into_data().expect("a data frame");
                out.extend_from_slice(&data);
            }
        });
        out
    }

    fn framed(m: &BatchUploadRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn batch(sizes: &[usize]) -> BatchUploadRequest {
        BatchUploadRequest {
            namespace: "ns".into(),
            items: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| BatchUploadItem {
                    digest: Some(ProtoDigest {
                        hash: format!("{i:064x}"),
                        size_bytes: n as u64,
                    }),
                    data: Bytes::from((0..n).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>()),
                })
                .collect(),
        }
    }

    #[test]
    fn a_large_message_is_framed_exactly_as_prost_encodes_it() {
        let m = batch(&[3 << 20, 1, 0, 700_000]);
        assert_eq!(frames(vec![m.clone()]), framed(&m));
    }

    #[test]
    fn small_and_empty_messages_follow_one_another_unchanged() {
        let ms = vec![
            batch(&[10]),
            BatchUploadRequest::default(),
            batch(&[9000, 5]),
        ];
        let want: Vec<u8> = ms.iter().flat_map(framed).collect();
        assert_eq!(frames(ms), want);
    }
}

//! Fuzz target: the WAL frame codec (`voucherd::wal::frame`), pure functions over bytes.
//!
//! The first byte picks a mode:
//! - even: decode the rest as a segment header and as a batch. Nothing may panic, and what
//!   decodes must be canonical: encoding the decoded values gives back exactly the input bytes
//!   (the decoder accepts only what the encoder writes);
//! - odd: round trip. The rest describes records (first seq, then kind/length/payload
//!   triples); encode them, decode the batch, and the records must come back equal. Every
//!   strict prefix and one bit flip chosen by the input must then fail to decode. Payloads come
//!   from the input, so they stay small; the 64 KiB payload limit is covered by the unit test
//!   `record_round_trip_at_size_limits` (a 64 KiB payload per run cut the speed tenfold).

#![no_main]

use libfuzzer_sys::fuzz_target;
use voucherd::wal::frame::{
    self, BATCH_HEADER_BYTES, BatchEncoder, FRAME_ALIGNMENT_BYTES, MAX_RECORD_PAYLOAD_BYTES,
    SEGMENT_HEADER_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        decode_raw(rest);
    } else {
        round_trip(rest);
    }
});

fn decode_raw(data: &[u8]) {
    if let Ok(header) = frame::decode_segment_header(data) {
        assert_eq!(
            frame::encode_segment_header(&header)[..],
            data[..SEGMENT_HEADER_BYTES],
            "a decoded segment header re-encodes to the same bytes"
        );
        assert!(header.first_seq >= 1);
    }

    let header = frame::check_batch_header(data);
    let envelope = frame::check_batch_envelope(data);
    match (&header, &envelope) {
        (Err(a), Err(b)) => assert_eq!(a, b, "the envelope reports the header's error"),
        (Err(e), Ok(_)) => panic!("check_batch_envelope accepted a refused header: {e}"),
        (Ok(h), Ok(env)) => {
            assert_eq!(h.encoded_bytes(), env.encoded_bytes);
            assert_eq!(
                (h.first_seq, h.record_count),
                (env.first_seq, env.record_count)
            );
        }
        (Ok(_), Err(_)) => {}
    }
    let batch = frame::decode_batch(data);
    match (&envelope, &batch) {
        (Err(a), Err(b)) => assert_eq!(a, b, "decode_batch reports the envelope's error"),
        (Ok(_), _) => {}
        (Err(e), Ok(_)) => panic!("decode_batch accepted what check_batch_envelope refused: {e}"),
    }
    let Ok(batch) = batch else {
        return;
    };
    let encoded = batch.encoded_bytes();
    assert!(encoded <= data.len());
    assert_eq!(encoded % FRAME_ALIGNMENT_BYTES, 0);
    assert!(batch.record_count() >= 1);
    let records: Vec<_> = batch
        .records()
        .collect::<Result<_, _>>()
        .expect("a validated batch yields only records");
    assert_eq!(records.len(), batch.record_count());

    let mut again = vec![0u8; encoded];
    let mut encoder = BatchEncoder::new(&mut again, batch.first_seq()).expect("encoder");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.seq, batch.first_seq() + i as u64);
        assert_ne!(record.kind, 0);
        assert!(record.payload.len() <= MAX_RECORD_PAYLOAD_BYTES);
        let seq = encoder
            .push(record.kind, record.payload)
            .expect("a decoded record re-encodes");
        assert_eq!(seq, record.seq);
    }
    assert_eq!(encoder.finish(), Ok(encoded));
    assert_eq!(
        again[..],
        data[..encoded],
        "decoded batch re-encodes to the same bytes"
    );
}

/// A tiny reader over the fuzz bytes; running out yields zeros.
struct Take<'a>(&'a [u8]);

impl Take<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for byte in &mut b {
            *byte = self.u8();
        }
        u64::from_le_bytes(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
}

fn round_trip(data: &[u8]) {
    let mut take = Take(data);
    // Seqs near the top of u64 are the interesting ones; keep them reachable.
    let first_seq = match take.u64() {
        0 => 1,
        s if s & (1 << 63) != 0 => u64::MAX - (s & 0xFF),
        s => s,
    };
    let flip = take.u16() as usize;
    let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
    while !take.0.is_empty() && records.len() < 64 {
        let kind = take.u8().max(1);
        let len = take.u16() as usize;
        let payload = take.bytes(len).to_vec();
        records.push((kind, payload));
    }
    if records.is_empty() {
        return;
    }
    let total: usize = records
        .iter()
        .map(|(_, p)| frame::record_encoded_len(p.len()).expect("small"))
        .sum::<usize>()
        + BATCH_HEADER_BYTES;
    // Filled with garbage so that a field the encoder forgets to write shows up.
    let mut buf = vec![0xA5; total];
    let mut encoder = BatchEncoder::new(&mut buf, first_seq).expect("encoder");
    let mut pushed = 0usize;
    for (kind, payload) in &records {
        match encoder.push(*kind, payload) {
            Ok(seq) => {
                assert_eq!(seq, first_seq + pushed as u64);
                pushed += 1;
            }
            Err(frame::EncodeError::SeqOverflow) => {
                assert_eq!(first_seq.checked_add(pushed as u64 + 1), None);
                break;
            }
            Err(e) => panic!("push refused a valid record: {e}"),
        }
    }
    let records = &records[..pushed];
    if records.is_empty() {
        // Only when the first seq is u64::MAX: its successor does not exist.
        assert_eq!(first_seq, u64::MAX);
        assert_eq!(encoder.finish(), Err(frame::EncodeError::EmptyBatch));
        return;
    }
    let len = encoder.finish().expect("finish");
    let expected_len: usize = records
        .iter()
        .map(|(_, p)| frame::record_encoded_len(p.len()).expect("small"))
        .sum::<usize>()
        + BATCH_HEADER_BYTES;
    assert_eq!(len, expected_len);
    let buf = &buf[..len];

    let batch = frame::decode_batch(buf).expect("an encoded batch decodes");
    assert_eq!(batch.first_seq(), first_seq);
    assert_eq!(batch.record_count(), records.len());
    assert_eq!(batch.encoded_bytes(), len);
    for (i, (decoded, (kind, payload))) in batch.records().zip(records).enumerate() {
        let decoded = decoded.expect("record");
        assert_eq!(decoded.seq, first_seq + i as u64);
        assert_eq!(decoded.kind, *kind);
        assert_eq!(decoded.payload, &payload[..]);
    }

    // A decoder that accepts a prefix would replay a torn batch as if it were whole.
    for cut in [
        0,
        1,
        BATCH_HEADER_BYTES - 1,
        BATCH_HEADER_BYTES,
        len / 2,
        len - 1,
    ] {
        if cut < len {
            assert!(frame::decode_batch(&buf[..cut]).is_err(), "prefix {cut}");
        }
    }
    // CRC32C detects every single-bit error.
    let mut damaged = buf.to_vec();
    let bit = flip % (len * 8);
    damaged[bit / 8] ^= 1 << (bit % 8);
    assert!(frame::decode_batch(&damaged).is_err(), "bit flip {bit}");
}

//! Avro single-object encoding header: `C3 01` + 8-byte little-endian CRC-64-AVRO fingerprint.

use super::error::DecodeError;

/// The two marker bytes that open every single-object encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the header: magic + fingerprint.
pub const HEADER_LEN: usize = 10;

/// Appends the header for a writer schema with this fingerprint.
pub fn write_header(buffer: &mut Vec<u8>, fingerprint: &[u8; 8]) {
    buffer.extend_from_slice(&MAGIC);
    buffer.extend_from_slice(fingerprint);
}

/// Splits a record into its writer fingerprint and its datum.
pub fn split(bytes: &[u8]) -> Result<([u8; 8], &[u8]), DecodeError> {
    if let [first, second, ..] = *bytes {
        if [first, second] != MAGIC {
            return Err(DecodeError::BadMagic {
                found: [first, second],
            });
        }
    }
    let (header, datum) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(DecodeError::TooShort { len: bytes.len() })?;
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&header[MAGIC.len()..]);
    Ok((fingerprint, datum))
}

/// A fingerprint as 16 lowercase hex digits, in wire order.
pub fn fingerprint_hex(fingerprint: &[u8; 8]) -> String {
    fingerprint
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

//! Turning request bodies into validated values; every error names the field at fault.
//!
//! Bodies are read as `serde_json::Value` and walked by hand so a wrong type says which field
//! (`contents[2].id: expected a string`), not only a line and column.

use std::net::SocketAddr;

use serde_json::{Map, Value};

use crate::content::{decide, ContentId, Manifest, Mode};
use crate::control::api::{validate_name, BITFIELD_BYTES_MAX};
use crate::control::registry::{Holding, PeerAnnounce};

/// Parses JSON text, saying where it broke.
fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))
}

fn object<'a>(value: &'a Value, name: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| format!("{name}: expected a JSON object"))
}

fn string<'a>(object: &'a Map<String, Value>, prefix: &str, field: &str) -> Result<&'a str, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err(format!("{prefix}{field}: missing field")),
        Some(value) => value.as_str().ok_or_else(|| format!("{prefix}{field}: expected a string")),
    }
}

/// Validates a `POST /v1/announce` body; at most `contents_max` content ids.
pub fn parse_announce(body: &[u8], contents_max: usize) -> Result<PeerAnnounce, String> {
    let value = parse_json(body)?;
    let root = object(&value, "body")?;
    let peer_id = string(root, "", "peer_id")?;
    validate_name("peer_id", peer_id)?;
    let group = string(root, "", "group")?;
    validate_name("group", group)?;
    let address_text = string(root, "", "address")?;
    let address: SocketAddr =
        address_text.parse().map_err(|_| format!("address: {address_text:?} is not IP:PORT (e.g. 10.0.0.5:7680)"))?;
    let contents = match root.get("contents") {
        None | Some(Value::Null) => return Err("contents: missing field".into()),
        Some(value) => value.as_array().ok_or("contents: expected an array")?,
    };
    if contents.len() > contents_max {
        return Err(format!("contents: {} ids; the limit is {contents_max}", contents.len()));
    }
    let mut holdings = Vec::with_capacity(contents.len());
    for (index, item) in contents.iter().enumerate() {
        let prefix = format!("contents[{index}].");
        let item = object(item, &format!("contents[{index}]"))?;
        let id = ContentId::parse(string(item, &prefix, "id")?).map_err(|e| format!("{prefix}id: {e}"))?;
        let holding = match item.get("bitfield") {
            None | Some(Value::Null) => Holding::All,
            Some(Value::String(text)) => {
                if text.len() > 2 * BITFIELD_BYTES_MAX {
                    return Err(format!("{prefix}bitfield: longer than {BITFIELD_BYTES_MAX} bytes"));
                }
                Holding::Pieces(hex::decode(text).map_err(|e| format!("{prefix}bitfield: not hex: {e}"))?)
            }
            Some(_) => return Err(format!("{prefix}bitfield: expected a hex string")),
        };
        holdings.push((id, holding));
    }
    Ok(PeerAnnounce { peer_id: peer_id.into(), group: group.into(), address, holdings })
}

/// Validates a `PUT /v1/content/{id}` body: the manifest, the hash file, and that they agree with
/// each other and with `id`. Returns the manifest and the raw hash file.
pub fn parse_publish(body: &[u8], id: &ContentId) -> Result<(Manifest, Vec<u8>), String> {
    let value = parse_json(body)?;
    let root = object(&value, "body")?;
    let manifest_value = root.get("manifest").ok_or("manifest: missing field")?;
    object(manifest_value, "manifest")?;
    let manifest: Manifest = serde_json::from_value(manifest_value.clone()).map_err(|e| format!("manifest: {e}"))?;
    manifest.validate().map_err(|e| format!("manifest: {e}"))?;
    if manifest.content_id != id.as_str() {
        return Err(format!("manifest: content_id {:?} is not the id in the path ({id})", manifest.content_id));
    }
    let hashfile_hex = string(root, "", "hashfile_hex")?;
    let hashfile = hex::decode(hashfile_hex).map_err(|e| format!("hashfile_hex: not hex: {e}"))?;
    // The same checks a downloader makes, so nothing is published that would put it in Simple mode.
    match decide(Ok(&manifest), Ok(&hashfile)) {
        Mode::P2p { .. } => Ok((manifest, hashfile)),
        Mode::Simple { reason } => Err(format!("hashfile_hex: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{HashFile, PieceSize};
    use crate::hash::sha256;

    fn announce(json: &str) -> Result<PeerAnnounce, String> {
        parse_announce(json.as_bytes(), 3)
    }

    #[test]
    fn announce_errors_name_the_field() {
        let ok = r#"{"peer_id":"p","group":"g","address":"10.0.0.1:7680","contents":[{"id":"x"},{"id":"y","bitfield":"f0"}]}"#;
        let parsed = announce(ok).unwrap();
        assert_eq!(parsed.holdings[1].1, Holding::Pieces(vec![0xf0]));
        for (body, expected) in [
            ("{", "not valid JSON"),
            ("[]", "body: expected a JSON object"),
            (r#"{"group":"g","address":"1.2.3.4:1","contents":[]}"#, "peer_id: missing field"),
            (r#"{"peer_id":5,"group":"g","address":"1.2.3.4:1","contents":[]}"#, "peer_id: expected a string"),
            (r#"{"peer_id":"p","group":"g g","address":"1.2.3.4:1","contents":[]}"#, "group"),
            (r#"{"peer_id":"p","group":"g","address":"host","contents":[]}"#, "address"),
            (r#"{"peer_id":"p","group":"g","address":"1.2.3.4:1"}"#, "contents: missing field"),
            (r#"{"peer_id":"p","group":"g","address":"1.2.3.4:1","contents":[{"id":"../x"}]}"#, "contents[0].id"),
            (
                r#"{"peer_id":"p","group":"g","address":"1.2.3.4:1","contents":[{"id":"x","bitfield":"zz"}]}"#,
                "bitfield",
            ),
            (r#"{"peer_id":"p","group":"g","address":"1.2.3.4:1","contents":[{},{},{},{}]}"#, "limit is 3"),
        ] {
            let error = announce(body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    fn publish_body(manifest: &Manifest, hashfile: &[u8]) -> Vec<u8> {
        serde_json::json!({ "manifest": manifest, "hashfile_hex": hex::encode(hashfile) }).to_string().into_bytes()
    }

    fn sample() -> (Manifest, Vec<u8>) {
        let hashfile = HashFile::new(PieceSize::new(65536).unwrap(), 10, vec![[1; 32]]).unwrap().to_bytes();
        let manifest = Manifest {
            version: 1,
            content_id: "c".into(),
            content_length: 10,
            piece_size: 65536,
            hashfile_sha256: hex::encode(sha256(&hashfile)),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        };
        (manifest, hashfile)
    }

    #[test]
    fn publish_checks_manifest_hashfile_and_id() {
        let id = ContentId::parse("c").unwrap();
        let (manifest, hashfile) = sample();
        assert_eq!(
            parse_publish(&publish_body(&manifest, &hashfile), &id).unwrap(),
            (manifest.clone(), hashfile.clone())
        );
        let other = ContentId::parse("d").unwrap();
        assert!(parse_publish(&publish_body(&manifest, &hashfile), &other).unwrap_err().contains("content_id"));
        let mut tampered = hashfile.clone();
        tampered[40] ^= 1;
        assert!(parse_publish(&publish_body(&manifest, &tampered), &id).unwrap_err().starts_with("hashfile_hex:"));
        let mut bad = manifest.clone();
        bad.piece_size = 3;
        assert!(parse_publish(&publish_body(&bad, &hashfile), &id)
            .unwrap_err()
            .contains("manifest: manifest piece_size"));
        let missing = br#"{"manifest":{"version":1}}"#;
        assert!(parse_publish(missing, &id).unwrap_err().contains("manifest: missing field"));
        let no_hashfile = serde_json::json!({ "manifest": manifest }).to_string();
        assert!(parse_publish(no_hashfile.as_bytes(), &id).unwrap_err().contains("hashfile_hex: missing field"));
    }
}

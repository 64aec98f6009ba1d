//! The wire: validated keys (and the errors naming one) and upload ids, what HEAD and GET
//! tell of an object, the `CompleteMultipartUpload` body, and the XML documents, dates and
//! headers of answers.

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::error::truncate;
use crate::{MAX_KEY_LEN, S3Error};

/// The namespace of S3's XML documents.
pub(crate) const S3_XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";

/// A validated object key: `/`-separated segments of `[A-Za-z0-9._-]`, none `.` or `..`, at
/// most [`MAX_KEY_LEN`] bytes. Safe to join to a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(key: &str) -> Result<Self, S3Error> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.split('/').all(segment_ok) {
            return Err(S3Error::bad_request(
                "InvalidArgument",
                format!(
                    "invalid object key {:?}: keys are at most {MAX_KEY_LEN} bytes of \
                     '/'-separated segments of letters, digits, '.', '_' and '-' (a segment \
                     cannot be empty, '.' or '..')",
                    truncate(key)
                ),
            ));
        }
        Ok(Self(key.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Errors about a key.
impl S3Error {
    pub(crate) fn no_such_key(key: &ObjectKey) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("no object with key {:?}", key.as_str()),
        )
    }
    pub(crate) fn key_conflict(key: &ObjectKey) -> Self {
        Self::bad_request(
            "InvalidArgument",
            format!(
                "key {:?} clashes with another object: here a key cannot be both an object \
                 and the prefix of other keys",
                key.as_str()
            ),
        )
    }
}

/// What HEAD and GET tell of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Without quotes: the MD5 hex of the content, or for a multipart upload S3's
    /// `<md5 of the parts' md5s>-<number of parts>`.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// A multipart upload id: 32 lowercase hex digits (random).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadId(String);

impl UploadId {
    pub(crate) fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
    /// `None` for anything that is not an id this server could have made.
    pub fn parse(id: &str) -> Option<Self> {
        (id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(id.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One `<Part>` of a `CompleteMultipartUpload` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    /// The ETag the client was given for the part, without quotes.
    pub etag: Option<String>,
}

#[derive(Deserialize)]
struct CompleteXml {
    #[serde(rename = "Part", default)]
    parts: Vec<PartXml>,
}

#[derive(Deserialize)]
struct PartXml {
    #[serde(rename = "PartNumber")]
    number: u32,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// Parses a `CompleteMultipartUpload` body (with or without the S3 namespace).
pub fn parse_complete(body: &[u8]) -> Result<Vec<CompletedPart>, S3Error> {
    let malformed = |detail: String| {
        S3Error::bad_request(
            "MalformedXML",
            format!("the CompleteMultipartUpload body is not valid: {detail}"),
        )
    };
    let text = std::str::from_utf8(body).map_err(|e| malformed(e.to_string()))?;
    let root = root_element(text).map_err(malformed)?;
    if root != "CompleteMultipartUpload" {
        return Err(malformed(format!(
            "the root element is {:?}, not CompleteMultipartUpload",
            truncate(&root)
        )));
    }
    let parsed: CompleteXml =
        quick_xml::de::from_str(text).map_err(|e| malformed(e.to_string()))?;
    if parsed.parts.is_empty() {
        return Err(malformed("it lists no <Part>".into()));
    }
    Ok(parsed
        .parts
        .into_iter()
        .map(|p| CompletedPart {
            number: p.number,
            etag: p.etag.map(|e| unquote(&e)),
        })
        .collect())
}

/// The local name of the first element of an XML document.
fn root_element(text: &str) -> Result<String, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) => {
                return Ok(e.local_name().into_inner().to_owned());
            }
            Event::Eof => return Err("it has no element".into()),
            _ => {}
        }
    }
}

pub(crate) fn iso8601(t: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

fn http_date(t: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 GMT".to_owned())
}

pub(crate) fn quoted(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

pub(crate) fn xml_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
    )
        .into_response()
}

pub(crate) fn object_headers(meta: &ObjectMeta) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    h.insert(header::ETAG, quoted(&meta.etag));
    if let Ok(v) = HeaderValue::from_str(&http_date(meta.last_modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_are_validated() {
        for good in ["a", "corral/0123/context.tar", "A-b_c.d/e", "..x/.y"] {
            assert_eq!(ObjectKey::parse(good).expect(good).as_str(), good);
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a/./b",
            "a b",
            "a%2Fb",
            "a~b",
            "ä",
            "a\\b",
            long.as_str(),
        ] {
            let e = ObjectKey::parse(bad).expect_err(bad);
            assert_eq!(e.code, "InvalidArgument");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        assert!(ObjectKey::parse(&"a".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn upload_ids_are_validated() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        for bad in ["", "../../etc", "0123456789ABCDEF0123456789abcdef", "0123"] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn complete_body_parses_with_and_without_namespace() {
        let with_ns = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><ETag>"AAAA"</ETag><PartNumber>1</PartNumber></Part>
  <Part><PartNumber>2</PartNumber><ETag>&quot;bbbb&quot;</ETag><ChecksumCRC32>x</ChecksumCRC32></Part>
</CompleteMultipartUpload>"#;
        let parts = parse_complete(with_ns).expect("parses");
        assert_eq!(
            parts,
            vec![
                CompletedPart {
                    number: 1,
                    etag: Some("aaaa".into())
                },
                CompletedPart {
                    number: 2,
                    etag: Some("bbbb".into())
                },
            ]
        );
        let without = b"<CompleteMultipartUpload><Part><PartNumber>3</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(
            parse_complete(without).expect("parses"),
            vec![CompletedPart {
                number: 3,
                etag: None
            }]
        );
        let prefixed = br#"<s3:CompleteMultipartUpload xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Part><s3:PartNumber>4</s3:PartNumber><s3:ETag>"dd"</s3:ETag></s3:Part></s3:CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(prefixed).expect("parses"),
            vec![CompletedPart {
                number: 4,
                etag: Some("dd".into())
            }]
        );
        let single = b"<CompleteMultipartUpload><Part><PartNumber>7</PartNumber><ETag>cc</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(single).expect("parses").len(), 1);
    }

    #[test]
    fn bad_complete_bodies_are_malformed_xml() {
        for bad in [
            &b""[..],
            b"not xml",
            b"<CompleteMultipartUpload></CompleteMultipartUpload>",
            b"<Other><Part><PartNumber>1</PartNumber></Part></Other>",
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber></Part></CompleteMultipartUpload>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>",
            b"\xff\xfe",
        ] {
            let e = parse_complete(bad).expect_err("malformed");
            assert_eq!(e.code, "MalformedXML", "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}

//! Fetching manifests and blobs, every byte checked against its digest.

use super::*;

impl RegistryClient {
    /// Fetches a manifest or index by tag or digest. Returns its bytes, media type and
    /// digest; a digest asked for or announced by the registry must match the bytes.
    pub async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, String, String), OciError> {
        let accept = [
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_MANIFEST,
            MT_DOCKER_LIST,
        ]
        .join(", ");
        let (resp, url) = self
            .get(r, &format!("manifests/{reference}"), &accept)
            .await?;
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = read_limited(resp, MAX_DOCUMENT, &url).await?;
        let digest = sha256_digest(&bytes);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            announced.filter(|a| a.starts_with("sha256:"))
        };
        if let Some(want) = expected
            && want != digest
        {
            return Err(OciError::Digest(format!(
                "manifest {reference} of {r}: expected {want}, got {digest}"
            )));
        }
        Ok((bytes, ctype, digest))
    }

    /// Fetches a small blob (a config) into memory, checked against its digest and size.
    pub async fn blob_bytes(&self, r: &Reference, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        validate_digest(&desc.digest)?;
        if desc.size > MAX_DOCUMENT {
            return Err(OciError::Invalid(format!(
                "config {} is {} bytes",
                desc.digest, desc.size
            )));
        }
        let (resp, url) = self
            .get(r, &format!("blobs/{}", desc.digest), "*/*")
            .await?;
        let bytes = read_limited(resp, MAX_DOCUMENT, &url).await?;
        let got = sha256_digest(&bytes);
        if got != desc.digest || bytes.len() as u64 != desc.size {
            return Err(OciError::Digest(format!(
                "blob {} of {r}: got {got} ({} bytes, expected {})",
                desc.digest,
                bytes.len(),
                desc.size
            )));
        }
        Ok(bytes)
    }

    /// Streams a blob into `dest`, checking size and digest; on any mismatch `dest` is
    /// removed and an error returned. `progress` gets the bytes received so far.
    pub async fn download_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), OciError> {
        validate_digest(&desc.digest)?;
        let result = async {
            let (mut resp, url) = self
                .get(r, &format!("blobs/{}", desc.digest), "*/*")
                .await?;
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(io_err("create", dest))?;
            let mut hasher = sha2::Sha256::new();
            let mut done = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| OciError::Registry(format!("GET {url}: {e}")))?
            {
                done += chunk.len() as u64;
                if done > desc.size {
                    return Err(OciError::Digest(format!(
                        "blob {} of {r} is larger than its {} bytes",
                        desc.digest, desc.size
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(io_err("write", dest))?;
                progress(done);
            }
            file.sync_all().await.map_err(io_err("fsync", dest))?;
            let got = format!("sha256:{}", hex(&hasher.finalize()));
            if got != desc.digest || done != desc.size {
                return Err(OciError::Digest(format!(
                    "blob {} of {r}: got {got} ({done} bytes, expected {})",
                    desc.digest, desc.size
                )));
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

pub(super) async fn read_limited(
    mut resp: reqwest::Response,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| OciError::Registry(format!("{what}: {e}")))?
    {
        if (out.len() + c.len()) as u64 > max {
            return Err(OciError::Invalid(format!(
                "{what}: larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

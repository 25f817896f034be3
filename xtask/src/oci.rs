//! Builds container images without Docker or a registry: a single-layer OCI image from a list of
//! local files, written as an OCI image-layout tar (`oci-layout`, `index.json`, `blobs/sha256/*`
//! with the config, the manifest and a gzip layer). It also carries a Docker-style
//! `manifest.json`, so the same tar loads with `ctr -n k8s.io images import`, `docker load` and
//! `kind load image-archive`. The OCI documents are `oci-spec` types; Docker's `manifest.json`
//! has none, so it stays plain JSON.
//!
//! The output is reproducible: fixed timestamps, uid/gid 0, sorted entries, so the same inputs
//! give the same image digest.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, Digest, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os,
    PlatformBuilder, RootFsBuilder, SCHEMA_VERSION, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

/// The fixed creation time that keeps the config, and so the digests, reproducible.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// What goes into an image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Full reference, e.g. `spawner.local/controller:dev`.
    pub name_tag: String,
    /// (file on this machine, absolute path inside the image, mode e.g. 0o755).
    pub files: Vec<(PathBuf, String, u32)>,
    /// Extra empty directories (absolute path in the image, mode), e.g. `("/tmp", 0o1777)`.
    pub dirs: Vec<(String, u32)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `uid[:gid]` (numeric: the image has no /etc/passwd unless you add one).
    pub user: String,
    /// `KEY=value`; `PATH=/usr/local/bin:/usr/bin:/bin` is added when no PATH is given.
    pub env: Vec<String>,
    pub workdir: String,
    pub exposed_ports: Vec<u16>,
    pub labels: BTreeMap<String, String>,
}

/// An image written by [`build_image_to`].
#[derive(Debug, Clone)]
pub struct Built {
    /// The OCI-layout tar.
    pub path: PathBuf,
    /// `repo:<tag>-<first 12 hex digits of the manifest digest>`: a reference that changes exactly
    /// when the image's content does. The tar carries it besides `name_tag`, so a workload
    /// pointed at it rolls out when, and only when, its image changed.
    pub content_ref: String,
}

/// Builds the image described by `spec` into the OCI-layout tar `out`.
pub fn build_image_to(spec: &ImageSpec, out: &Path) -> Result<Built> {
    let (repo, tag) = split_ref(&spec.name_tag)?;
    let layer_tar = layer(spec)?;
    let diff_id = sha256_hex(&layer_tar);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;
    let layer_digest = sha256_hex(&layer_gz);

    let config_blob = canonical_json(&image_config(spec, &diff_id)?)?;
    let config_digest = sha256_hex(&config_blob);
    let config = Descriptor::new(MediaType::ImageConfig, config_blob.len() as u64, oci_digest(&config_digest)?);
    let layer = Descriptor::new(MediaType::ImageLayerGzip, layer_gz.len() as u64, oci_digest(&layer_digest)?);
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(vec![layer])
        .build()?;
    let manifest_blob = canonical_json(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_blob);
    let content_tag = format!("{tag}-{}", &manifest_digest[..12]);
    // The same manifest under both tags: one entry per name, as `ctr images import` reads them.
    let manifest = Descriptor::new(MediaType::ImageManifest, manifest_blob.len() as u64, oci_digest(&manifest_digest)?);
    let entries = [&tag, &content_tag].map(|t| index_entry(&manifest, &repo, t));
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(entries.into_iter().collect::<Result<Vec<_>>>()?)
        .build()?;
    let index = canonical_json(&index)?;
    let oci_layout = canonical_json(&OciLayoutBuilder::default().image_layout_version("1.0.0").build()?)?;
    let docker_manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [format!("{repo}:{tag}"), format!("{repo}:{content_tag}")],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]))?;

    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = out.with_extension("tar.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    append_dir(&mut tar, "blobs/", 0o755)?;
    append_dir(&mut tar, "blobs/sha256/", 0o755)?;
    append(&mut tar, &format!("blobs/sha256/{config_digest}"), &config_blob, 0o644)?;
    append(&mut tar, &format!("blobs/sha256/{layer_digest}"), &layer_gz, 0o644)?;
    append(&mut tar, &format!("blobs/sha256/{manifest_digest}"), &manifest_blob, 0o644)?;
    append(&mut tar, "index.json", &index, 0o644)?;
    append(&mut tar, "manifest.json", &docker_manifest, 0o644)?;
    append(&mut tar, "oci-layout", &oci_layout, 0o644)?;
    tar.into_inner()?.flush()?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(Built { path: out.to_path_buf(), content_ref: format!("{repo}:{content_tag}") })
}

/// The image's config blob: what to run, as whom, and the single layer's uncompressed digest.
fn image_config(spec: &ImageSpec, diff_id: &str) -> Result<ImageConfiguration> {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/bin:/usr/bin:/bin".to_string());
    }
    let mut config = ConfigBuilder::default().env(env).entrypoint(spec.entrypoint.clone()).user(spec.user.clone());
    if !spec.cmd.is_empty() {
        config = config.cmd(spec.cmd.clone());
    }
    if !spec.workdir.is_empty() {
        config = config.working_dir(spec.workdir.clone());
    }
    if !spec.exposed_ports.is_empty() {
        config = config.exposed_ports(spec.exposed_ports.iter().map(|p| format!("{p}/tcp")).collect::<Vec<_>>());
    }
    if !spec.labels.is_empty() {
        config = config.labels(spec.labels.clone().into_iter().collect::<HashMap<_, _>>());
    }
    let history = HistoryBuilder::default().created(EPOCH).created_by("spawner xtask oci::build_image").build()?;
    Ok(ImageConfigurationBuilder::default()
        .created(EPOCH)
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config.build()?)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![format!("sha256:{diff_id}")]).build()?)
        .history(vec![history])
        .build()?)
}

/// The index's entry for `manifest` under `repo:tag`, named the ways containerd and the OCI spec
/// look for it.
fn index_entry(manifest: &Descriptor, repo: &str, tag: &str) -> Result<Descriptor> {
    let mut entry = manifest.clone();
    entry.set_platform(Some(PlatformBuilder::default().architecture(Arch::Amd64).os(Os::Linux).build()?));
    entry.set_annotations(Some(HashMap::from([
        ("io.containerd.image.name".to_string(), format!("{repo}:{tag}")),
        (ANNOTATION_REF_NAME.to_string(), tag.to_string()),
    ])));
    Ok(entry)
}

/// JSON with every object's keys sorted: oci-spec keeps labels, ports and annotations in
/// `HashMap`s, whose order changes from run to run, and the digests must not.
fn canonical_json(document: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut value = serde_json::to_value(document)?;
    value.sort_all_objects();
    Ok(serde_json::to_vec(&value)?)
}

fn oci_digest(sha256_hex: &str) -> Result<Digest> {
    Ok(Sha256Digest::from_str(sha256_hex)?.into())
}

/// `registry/repo:tag` -> (`registry/repo`, `tag`); the tag defaults to `latest`.
fn split_ref(name_tag: &str) -> Result<(String, String)> {
    if name_tag.is_empty() || name_tag.contains('@') {
        bail!("image name {name_tag:?}: want repo[:tag] without digest");
    }
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name_tag[last_slash..].rfind(':') {
        Some(i) => Ok((name_tag[..last_slash + i].to_string(), name_tag[last_slash + i + 1..].to_string())),
        None => Ok((name_tag.to_string(), "latest".to_string())),
    }
}

/// The uncompressed layer: parent directories (0755), `dirs`, then `files`, sorted by path.
fn layer(spec: &ImageSpec) -> Result<Vec<u8>> {
    // path in image (relative, no leading '/') -> (Some(source) or None for a directory, mode)
    let mut entries: BTreeMap<String, (Option<PathBuf>, u32)> = BTreeMap::new();
    let add_parents = |entries: &mut BTreeMap<String, (Option<PathBuf>, u32)>, path: &str| {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc += part;
            acc += "/";
            entries.entry(acc.clone()).or_insert((None, 0o755));
        }
    };
    for (dir, mode) in &spec.dirs {
        let rel = format!("{}/", dir.trim_matches('/'));
        if rel == "/" {
            bail!("image dir {dir:?}: not a path");
        }
        add_parents(&mut entries, &rel);
        entries.insert(rel, (None, *mode));
    }
    for (src, dest, mode) in &spec.files {
        let rel = dest.trim_start_matches('/').to_string();
        if rel.is_empty() || rel.ends_with('/') {
            bail!("image file destination {dest:?}: want a file path");
        }
        if !src.is_file() {
            bail!("image {}: {} is not a file", spec.name_tag, src.display());
        }
        add_parents(&mut entries, &rel);
        entries.insert(rel, (Some(src.clone()), *mode));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, (src, mode)) in &entries {
        match src {
            None => append_dir(&mut tar, path, *mode)?,
            Some(src) => {
                let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                append(&mut tar, path, &data, *mode)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
    tar.append_data(&mut h, path, data).with_context(|| format!("adding {path} to the image tar"))
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, mode);
    tar.append_data(&mut h, path, std::io::empty()).with_context(|| format!("adding {path} to the image tar"))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_ref("spawner.local/pause:3.10").unwrap(), ("spawner.local/pause".into(), "3.10".into()));
        assert_eq!(split_ref("localhost:5000/x").unwrap(), ("localhost:5000/x".into(), "latest".into()));
        assert_eq!(split_ref("busy").unwrap(), ("busy".into(), "latest".into()));
    }

    #[test]
    fn reproducible() {
        let dir = std::env::temp_dir().join(format!("oci-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("hello");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        let spec = ImageSpec {
            name_tag: "spawner.local/test:1".into(),
            files: vec![(src.clone(), "/usr/bin/hello".into(), 0o755)],
            dirs: vec![("/tmp".into(), 0o1777)],
            entrypoint: vec!["/usr/bin/hello".into()],
            user: "65534".into(),
            // Two of each: oci-spec keeps them in HashMaps, whose order must not reach the digest.
            exposed_ports: vec![8080, 9090],
            labels: [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let a = build_image_to(&spec, &dir.join("a.tar")).unwrap();
        let b = build_image_to(&spec, &dir.join("b.tar")).unwrap();
        assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap());
        assert_eq!(a.content_ref, b.content_ref);
        assert!(a.content_ref.starts_with("spawner.local/test:1-"), "{}", a.content_ref);
        std::fs::write(&src, b"#!/bin/false\n").unwrap();
        let c = build_image_to(&spec, &dir.join("c.tar")).unwrap();
        assert_ne!(a.content_ref, c.content_ref, "new content, new reference");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

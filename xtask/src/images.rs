//! `cargo xtask images`: the project's container images without Docker or a registry.
//!
//! Each image holds one release binary and exactly the shared libraries `ldd` says it loads
//! (glibc from this Debian), runs as uid 65532, and is written as an OCI image-layout tar by
//! [`crate::oci`]. nginx comes from Debian's package the same way. For machines with Docker,
//! `images/Dockerfile` builds the same images in multi-stage builds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use xshell::{Shell, cmd};

use crate::oci::{Built, ImageSpec, build_image_to};

/// The binary of the controller, sweeper and API images (see `src/bin/spawner-system.rs`: one
/// thin-LTO optimization for the three instead of one each).
const SYSTEM: &str = "spawner-system";

/// Component name (as in `spawner::names::image`), the name its binary is installed (and run)
/// under, and the release binary that is.
pub const RUST_IMAGES: &[(&str, &str, &str)] = &[
    ("controller", "spawner-controller", SYSTEM),
    ("sidecar", "spawner-sidecar", "spawner-sidecar"),
    ("sweeper", "spawner-sweeper", SYSTEM),
    ("router", "spawner-router", "spawner-router"),
    ("api", "spawner-api", SYSTEM),
    ("demo-drop-four", "spawner-demo-drop-four", "spawner-demo-drop-four"),
    ("demo-lobby", "spawner-demo-lobby", "spawner-demo-lobby"),
];

/// Images only the tests use (component name, example binary).
pub const TEST_IMAGES: &[(&str, &str)] = &[("netcheck", "spawner-netcheck")];

const NONROOT: &str = "65532:65532";

/// One built image: its name without the tag (`localhost/spawner/controller`) and the reference
/// that pins its content (`localhost/spawner/controller:0.1.0-<digest>`).
#[derive(Debug, Clone)]
pub struct Pinned {
    pub name: String,
    pub content_ref: String,
}

impl Pinned {
    pub fn of(built: &Built) -> Self {
        let name = built.content_ref.rsplit_once(':').map_or(built.content_ref.as_str(), |(name, _)| name);
        Pinned { name: name.to_string(), content_ref: built.content_ref.clone() }
    }

    /// The tag part of the content reference.
    pub fn tag(&self) -> &str {
        self.content_ref.rsplit_once(':').map_or("", |(_, tag)| tag)
    }
}

/// Builds Spawner's images, and with `test_images` those only the tests use; returns what was
/// written.
pub fn build(test_images: bool) -> Result<Vec<Built>> {
    let root = crate::project_root();
    let started = Instant::now();
    println!("==> cargo build --release (the binaries in the images)");
    // The test images are examples, which link the dev-dependencies: built together with the
    // binaries, those dependencies' features would be unified into the binaries (larger images,
    // a longer build). So: a build of their own, and none for `deploy`.
    let test_images = if test_images { TEST_IMAGES } else { &[] };
    let mut built: Vec<&str> = RUST_IMAGES.iter().map(|(_, _, binary)| *binary).collect();
    built.sort_unstable();
    built.dedup();
    let bins = built.into_iter().flat_map(|bin| ["--bin", bin]);
    let examples = test_images.iter().flat_map(|(_, example)| ["--example", example]);
    let builds = [bins.collect::<Vec<_>>(), examples.collect()];
    for targets in builds.into_iter().filter(|targets| !targets.is_empty()) {
        let sh = Shell::new()?;
        sh.change_dir(&root);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        cmd!(sh, "{cargo} build --release --package spawner {targets...}")
            .quiet()
            .run()
            .context("cargo build --release failed")?;
    }
    println!("    built in {:.1?}", started.elapsed());

    let out_dir = crate::cluster::cache_root()?.join("images");
    std::fs::create_dir_all(&out_dir)?;
    let mut tars = Vec::new();
    let binaries = RUST_IMAGES
        .iter()
        .map(|(c, name, binary)| (c, *name, crate::target_dir().join("release").join(binary)))
        .chain(test_images.iter().map(|(c, b)| (c, *b, crate::target_dir().join("release/examples").join(b))));
    for (component, name, binary) in binaries {
        let entry = format!("/usr/local/bin/{name}");
        let mut files = vec![(binary.clone(), entry.clone(), 0o755)];
        files.extend(shared_libraries(&binary)?);
        tars.push(write(
            ImageSpec {
                name_tag: spawner::names::image(component),
                files,
                entrypoint: vec![entry],
                user: NONROOT.into(),
                ..Default::default()
            },
            &out_dir,
        )?);
    }
    tars.push(write(nginx_image()?, &out_dir)?);
    println!("    images written to {} in {:.1?}", out_dir.display(), started.elapsed());
    Ok(tars)
}

/// Builds the images and loads them into the local cluster's containerd, each under its
/// release tag and its content tag; returns the content references.
pub fn build_and_load(test_images: bool) -> Result<Vec<Pinned>> {
    let built = build(test_images)?;
    load_local(&built)?;
    Ok(built.iter().map(Pinned::of).collect())
}

/// Loads built images into the local cluster's containerd.
pub fn load_local(built: &[Built]) -> Result<()> {
    for image in built {
        let t = Instant::now();
        crate::cluster::load_image(&image.path).with_context(|| format!("importing {}", image.path.display()))?;
        println!("    imported {} in {:.1?}", image.content_ref, t.elapsed());
    }
    Ok(())
}

fn write(spec: ImageSpec, dir: &Path) -> Result<Built> {
    let file: String = spec.name_tag.rsplit('/').next().unwrap().replace(':', "-");
    let out = dir.join(format!("{file}.tar"));
    let built = build_image_to(&spec, &out).with_context(|| format!("building image {}", spec.name_tag))?;
    println!("    {} -> {}", built.content_ref, out.display());
    Ok(built)
}

fn nginx_image() -> Result<ImageSpec> {
    let nginx = PathBuf::from("/usr/sbin/nginx");
    if !nginx.exists() {
        bail!("/usr/sbin/nginx is missing: install Debian's nginx package (`apt-get install nginx-light` or `nginx`)");
    }
    let mut files = vec![(nginx.clone(), "/usr/sbin/nginx".to_string(), 0o755)];
    files.extend(shared_libraries(&nginx)?);
    files.push((PathBuf::from("/etc/nginx/mime.types"), "/etc/nginx/mime.types".into(), 0o644));
    Ok(ImageSpec {
        name_tag: spawner::names::image("nginx"),
        files,
        // nginx checks its compiled-in prefix paths at start; the config moves every temp path
        // to /tmp (an emptyDir), but the directories must exist.
        dirs: vec![("/tmp".into(), 0o1777), ("/var/lib/nginx".into(), 0o755), ("/var/log/nginx".into(), 0o755)],
        entrypoint: vec!["/usr/sbin/nginx".into()],
        user: NONROOT.into(),
        ..Default::default()
    })
}

/// The shared libraries a dynamically linked binary loads, as (host path, image path, mode).
pub fn shared_libraries(binary: &Path) -> Result<Vec<(PathBuf, String, u32)>> {
    let sh = Shell::new()?;
    let out = cmd!(sh, "ldd {binary}").quiet().ignore_status().output().context("running ldd")?;
    if !out.status.success() {
        // A static binary: nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            let resolved = std::fs::canonicalize(path).with_context(|| format!("resolving {path}"))?;
            libs.push((resolved, path.to_string(), 0o755));
        }
    }
    Ok(libs)
}

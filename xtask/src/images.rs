//! `cargo xtask images`: the project's container images without Docker or a registry.
//!
//! Each image holds one release binary and exactly the shared libraries `ldd` says it loads
//! (glibc from this Debian), runs as uid 65532, and is written as an OCI image-layout tar by
//! [`crate::oci`]. nginx comes from Debian's package the same way. The same tars load into
//! kind's nodes (`cargo xtask deploy --kind`), so no Dockerfile is needed or kept.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use xshell::{Shell, cmd};

use crate::oci::{Built, ImageSpec, build_image_to};

/// The binary of the controller, sweeper and API images (see `src/bin/spawner-system.rs`: the
/// three share one binary's code generation).
const SYSTEM: &str = "spawner-system";

/// The sidecar's binary: built in a profile of its own (see [`build_release`]).
pub const SIDECAR: &str = "spawner-sidecar";

/// Component name (as in `spawner::names::image`), the name its binary is installed (and run)
/// under, and the release binary that is.
pub const RUST_IMAGES: &[(&str, &str, &str)] = &[
    ("controller", "spawner-controller", SYSTEM),
    ("sidecar", "spawner-sidecar", SIDECAR),
    ("sweeper", "spawner-sweeper", SYSTEM),
    ("router", "spawner-router", "spawner-router"),
    ("api", "spawner-api", SYSTEM),
    ("demo-drop-four", "spawner-demo-drop-four", "spawner-demo-drop-four"),
    ("demo-lobby", "spawner-demo-lobby", "spawner-demo-lobby"),
];

/// Images only the tests use (component name, and the package whose binary of that name it
/// holds).
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
    let started = Instant::now();
    println!("==> cargo build --release (the binaries in the images)");
    let mut bins: Vec<&str> = RUST_IMAGES.iter().map(|(_, _, binary)| *binary).collect();
    bins.sort_unstable();
    bins.dedup();
    build_release(&bins)?;
    // The test images' programs are packages of their own with no dependencies (tests/apps):
    // a build of their own, seconds long, and none for `deploy`.
    let test_images = if test_images { TEST_IMAGES } else { &[] };
    if !test_images.is_empty() {
        let packages = test_images.iter().flat_map(|(_, package)| ["--package", package]);
        cargo_build(&["--release"].into_iter().chain(packages).collect::<Vec<_>>())?;
    }
    println!("    built in {:.1?}", started.elapsed());

    let out_dir = crate::cluster::cache_root()?.join("images");
    std::fs::create_dir_all(&out_dir)?;
    let binaries = RUST_IMAGES
        .iter()
        .map(|(c, name, binary)| (c, *name, release_binary(binary)))
        .chain(test_images.iter().map(|(c, b)| (c, *b, crate::target_dir().join("release").join(b))));
    let mut specs = Vec::new();
    for (component, name, binary) in binaries {
        let entry = format!("/usr/local/bin/{name}");
        let mut files = vec![(binary.clone(), entry.clone(), 0o755)];
        files.extend(shared_libraries(&binary)?);
        specs.push(ImageSpec {
            name_tag: spawner::names::image(component),
            files,
            entrypoint: vec![entry],
            user: NONROOT.into(),
            ..Default::default()
        });
    }
    specs.push(nginx_image()?);
    // Each image's layer is gzipped: one thread per image, as that is CPU work.
    let tars = std::thread::scope(|scope| {
        let writers: Vec<_> = specs.into_iter().map(|spec| scope.spawn(|| write(spec, &out_dir))).collect();
        writers.into_iter().map(|w| w.join().expect("image writer panicked")).collect::<Result<Vec<_>>>()
    })?;
    println!("    images written to {} in {:.1?}", out_dir.display(), started.elapsed());
    Ok(tars)
}

/// Builds release binaries of the `spawner` package as the images ship them; returns their paths
/// in the order of `bins`. The sidecar builds on its own, in the `sidecar` profile (thin LTO)
/// and without the `kubernetes` feature, so that its LTO reaches only what it links. The others
/// build in the release profile with the `xtask` package selected too: `cargo xtask` runs in that
/// profile, and the same packages selected resolve the same features, so the dependencies and
/// the library compiled for the xtask are the ones the binaries link (a deploy compiles them once).
pub fn build_release(bins: &[&str]) -> Result<Vec<PathBuf>> {
    let (sidecar, others): (Vec<&str>, Vec<&str>) = bins.iter().partition(|b| **b == SIDECAR);
    if !others.is_empty() {
        let targets = others.iter().flat_map(|bin| ["--bin", bin]);
        cargo_build(
            &["--release", "--package", "spawner", "--package", "xtask"].into_iter().chain(targets).collect::<Vec<_>>(),
        )?;
    }
    if !sidecar.is_empty() {
        cargo_build(&["--profile", "sidecar", "--package", "spawner", "--no-default-features", "--bin", SIDECAR])?;
    }
    Ok(bins.iter().map(|bin| release_binary(bin)).collect())
}

/// Where [`build_release`] leaves `bin`.
pub fn release_binary(bin: &str) -> PathBuf {
    crate::target_dir().join(if bin == SIDECAR { "sidecar" } else { "release" }).join(bin)
}

/// `cargo build ARGS` in the project's root.
fn cargo_build(args: &[&str]) -> Result<()> {
    let status = crate::cargo().arg("build").args(args).status().context("running cargo build")?;
    ensure!(status.success(), "cargo build {} failed ({status})", args.join(" "));
    Ok(())
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

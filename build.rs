//! Compiles every `ebpf/*.bpf.c` with clang and links them into one object
//! (`inferlane.bpf.o` in OUT_DIR) that src/bpf embeds. One object, because the
//! programs share their maps: `bpftool gen object` merges the `__weak` map
//! definitions every source includes into a single map of each name.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// What to install when a tool or header is missing: one line, the exact packages.
const INSTALL_HINT: &str = "apt-get install clang llvm libbpf-dev bpftool linux-libc-dev";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let ebpf = manifest.join("ebpf");
    println!("cargo:rerun-if-changed={}", ebpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");

    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let bpftool = std::env::var("BPFTOOL").unwrap_or_else(|_| "bpftool".into());
    require_tool(&clang, "--version");
    require_tool(&bpftool, "version");
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail("libbpf headers (/usr/include/bpf/bpf_helpers.h) not found");
    }
    let multiarch = multiarch_include();
    if !multiarch.join("asm/types.h").exists() {
        fail(&format!("kernel headers ({}/asm/types.h) not found", multiarch.display()));
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&ebpf)
        .unwrap_or_else(|e| fail(&format!("read {}: {e}", ebpf.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for entry in std::fs::read_dir(&ebpf).unwrap().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let mut objects = Vec::new();
    for src in &sources {
        let stem = src.file_name().unwrap().to_string_lossy().replace(".bpf.c", "");
        let obj = out.join(format!("{stem}.o"));
        let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap();
        let status = Command::new(&clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{}", bpf_arch(&target_arch)))
            .arg("-I")
            .arg(&multiarch)
            .arg("-I")
            .arg(&ebpf)
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| fail(&format!("run {clang}: {e}")));
        if !status.success() {
            // clang already printed the diagnostics above this line.
            eprintln!("error: clang failed on {}", src.display());
            exit(1);
        }
        objects.push(obj);
    }

    let linked = out.join("inferlane.bpf.o");
    let status = Command::new(&bpftool)
        .args(["gen", "object"])
        .arg(&linked)
        .args(&objects)
        .status()
        .unwrap_or_else(|e| fail(&format!("run {bpftool}: {e}")));
    if !status.success() {
        eprintln!("error: bpftool gen object failed to link {objects:?}");
        exit(1);
    }
}

fn require_tool(tool: &str, arg: &str) {
    let ok = Command::new(tool)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        fail(&format!("`{tool}` not found"));
    }
}

/// Debian keeps <asm/types.h> under the multiarch directory; clang -target bpf
/// does not look there on its own.
fn multiarch_include() -> PathBuf {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        other => fail(&format!("no known multiarch include directory for {other}")),
    };
    PathBuf::from("/usr/include").join(triple)
}

fn bpf_arch(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv",
        _ => "powerpc",
    }
}

fn fail(what: &str) -> ! {
    eprintln!("error: {what}; install the eBPF build tools with: {INSTALL_HINT}");
    exit(1);
}

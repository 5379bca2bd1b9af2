/// Rebuild when the bpf-linker binary changes (as in aya-template; the linker is an
/// undeclared build dependency).
fn main() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("bpf-linker");
        if candidate.is_file() {
            println!("cargo:rerun-if-changed={}", candidate.display());
            return;
        }
    }
}

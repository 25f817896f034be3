fn main() {
    eprintln!("spawner-sidecar: not implemented yet");
    std::process::exit(2);
}

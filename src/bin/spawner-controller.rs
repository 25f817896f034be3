fn main() {
    eprintln!("spawner-controller: not implemented yet");
    std::process::exit(2);
}

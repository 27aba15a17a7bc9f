fn main() {
    std::process::exit(relayauth_mount::cli::run());
}

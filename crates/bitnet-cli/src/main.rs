fn main() {
    println!("bitnet");
}

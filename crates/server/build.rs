//! The store embeds its migrations at compile time (`migrate!`); without this, adding a
//! migration file alone would not rebuild the server (the macro's documented build script).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

//! `sqlx::migrate!` embeds the migrations at compile time; without this, adding a migration
//! file alone would not rebuild the server (sqlx's documented build script).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

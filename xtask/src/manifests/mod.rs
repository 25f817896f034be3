pub enum Mode { Write, Check } pub fn generate(_m: Mode) -> anyhow::Result<()> { Ok(()) }

pub mod dump;
pub mod load;

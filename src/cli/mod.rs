//! `imc` commands (filled in by the imc work).

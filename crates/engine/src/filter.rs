//! Filter expressions over HL7 v2 paths.

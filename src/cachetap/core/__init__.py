"""Pure logic, stdlib only, no I/O: values in, decisions out."""

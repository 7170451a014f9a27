// Package wire owns the migration protocol between a dmig source and a dmig
// destination: framing, message types and versioning. It imports nothing of
// the project and does no I/O policy: callers decide what to send when.
package wire

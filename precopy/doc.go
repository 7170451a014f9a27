// Package precopy owns the source side of a migration: dirty tracking,
// iterations, page classification, the switchover policy and the post-copy
// page server. Until the destination resumes, any error aborts and leaves
// the source guest running with its memory untouched (or, if resuming it
// fails within its bound, paused: ErrSourcePaused). Config.Guard hears of
// the pause before the guest is paused and of Go before Go is written; an
// error from it aborts, so Go never leaves while a guard might resume the
// source.
//
// Storage references (hybrid, refs.go) carry the hash of the page as read
// from guest RAM, so they move exactly what a data page would; a layout is
// used only for the pass it was fetched for (and the post-copy push for a
// layout fetched just before the pause, minus pages written since, sent
// before any data). A page the destination hands back (its reference
// failed) is pending again and never referenced until the guest writes it.
package precopy

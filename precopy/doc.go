// Package precopy owns the source side of a migration: dirty tracking,
// iterations, page classification, the switchover policy and the post-copy
// page server. Until the destination resumes, any error aborts and leaves
// the source guest running with its memory untouched.
package precopy

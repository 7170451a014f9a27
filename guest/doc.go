// Package guest owns the in-guest agent: it finds clean InnoDB frames in
// mysqld's memory, maps them to guest-physical pages (pagemap) and to disk
// offsets (FIEMAP + partition start), and serves that layout to the host.
package guest

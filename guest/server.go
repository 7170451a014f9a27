package guest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DefaultDSN connects as root over Debian's default socket.
const DefaultDSN = "root@unix(/run/mysqld/mysqld.sock)/"

// Server is what the agent learns from the database server over SQL.
type Server struct {
	Version     string
	MariaDB     bool
	PageSize    int    // innodb_page_size
	DataDir     string // absolute
	PoolSize    uint64 // innodb_buffer_pool_size
	PoolSizeMax uint64 // innodb_buffer_pool_size_max (MariaDB 10.11.12+: pool reserved up front); 0 if absent
	ChunkSize   uint64 // innodb_buffer_pool_chunk_size; 0 if absent or automatic
	FlushMethod string
	PIDFile     string
	Spaces      map[uint32]*Space
}

// Space is one tablespace file.
type Space struct {
	ID        uint32
	Name      string
	Path      string // absolute
	Size      uint64 // file size in bytes when listed; pages past it are not this space's
	Flags     uint32 // FSP_FLAGS as the server reports them
	FullCRC32 bool   // MariaDB full_crc32 page format
	// Skip says why pages of this space are never referenced (their disk
	// bytes differ from memory): "encrypted", "page_compressed",
	// "row_compressed", "temporary"; empty if they may be.
	Skip string
}

// openDB opens a connection pool for dsn (at most one connection: the
// agent's queries are few and serial).
func openDB(dsn string) (*sql.DB, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(time.Minute)
	return db, nil
}

// classify turns driver errors into the package's sentinels, keeping them.
func classify(err error) error {
	var me *mysql.MySQLError
	switch {
	case errors.As(err, &me) && (me.Number == 1045 || me.Number == 1698):
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %w", ErrNoServer, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %w", ErrNoServer, err)
	}
	return err
}

// discover reads the server's settings and tablespaces. It uses only
// information_schema tables that take no buffer-pool latch.
func discover(ctx context.Context, db *sql.DB) (*Server, error) {
	if err := db.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("connect to database: %w", classify(err))
	}
	vars := make(map[string]string)
	rows, err := db.QueryContext(ctx, `SHOW GLOBAL VARIABLES WHERE Variable_name IN
		('version', 'datadir', 'pid_file', 'innodb_page_size', 'innodb_buffer_pool_size',
		 'innodb_buffer_pool_size_max', 'innodb_buffer_pool_chunk_size', 'innodb_flush_method')`)
	if err != nil {
		return nil, fmt.Errorf("read server variables: %w", classify(err))
	}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read server variables: %w", err)
		}
		vars[k] = v
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("read server variables: %w", err)
	}
	s := &Server{
		Version:     vars["version"],
		MariaDB:     strings.Contains(strings.ToLower(vars["version"]), "mariadb"),
		DataDir:     vars["datadir"],
		FlushMethod: vars["innodb_flush_method"],
		PIDFile:     vars["pid_file"],
	}
	ps, err := strconv.Atoi(vars["innodb_page_size"])
	if err != nil || ps < 4096 || ps > 65536 || ps&(ps-1) != 0 {
		return nil, fmt.Errorf("read innodb_page_size %q: not a page size (is InnoDB enabled?)", vars["innodb_page_size"])
	}
	s.PageSize = ps
	s.PoolSize, _ = strconv.ParseUint(vars["innodb_buffer_pool_size"], 10, 64)
	s.PoolSizeMax, _ = strconv.ParseUint(vars["innodb_buffer_pool_size_max"], 10, 64)
	s.ChunkSize, _ = strconv.ParseUint(vars["innodb_buffer_pool_chunk_size"], 10, 64)
	if s.PoolSize == 0 || s.DataDir == "" {
		return nil, fmt.Errorf("read server variables: no buffer pool size or datadir")
	}
	if s.Spaces, err = tablespaces(ctx, db, s); err != nil {
		return nil, err
	}
	return s, nil
}

// tablespaces lists the tablespace files: MariaDB's INNODB_SYS_TABLESPACES
// (FILENAME since 10.5) or MySQL 8's INNODB_TABLESPACES + INNODB_DATAFILES.
func tablespaces(ctx context.Context, db *sql.DB, s *Server) (map[uint32]*Space, error) {
	q := `SELECT SPACE, NAME, FLAG, FILENAME, FILE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES`
	if !s.MariaDB {
		q = `SELECT t.SPACE, t.NAME, t.FLAG, d.PATH, t.FILE_SIZE FROM information_schema.INNODB_TABLESPACES t
			JOIN information_schema.INNODB_DATAFILES d ON d.SPACE = t.SPACE`
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("list tablespaces: %w", classify(err))
	}
	spaces := make(map[uint32]*Space)
	for rows.Next() {
		var sp Space
		var flags int64
		if err := rows.Scan(&sp.ID, &sp.Name, &flags, &sp.Path, &sp.Size); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list tablespaces: %w", err)
		}
		sp.Flags = uint32(flags)
		if !filepath.IsAbs(sp.Path) {
			sp.Path = filepath.Join(s.DataDir, sp.Path)
		}
		classifySpace(&sp, s.MariaDB)
		if s.MariaDB && sp.ID == mariaTempSpaceID {
			sp.Skip = "temporary" // ibtmp1: never written back, never disk-backed
		}
		spaces[sp.ID] = &sp
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("list tablespaces: %w", err)
	}
	if s.MariaDB {
		// Encryption is not in MariaDB's flags: it is crypt data on page 0.
		rows, err := db.QueryContext(ctx, `SELECT SPACE FROM information_schema.INNODB_TABLESPACES_ENCRYPTION
			WHERE ENCRYPTION_SCHEME <> 0`)
		if err != nil {
			return nil, fmt.Errorf("list encrypted tablespaces: %w", classify(err))
		}
		for rows.Next() {
			var id uint32
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, fmt.Errorf("list encrypted tablespaces: %w", err)
			}
			if sp := spaces[id]; sp != nil {
				sp.Skip = "encrypted"
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("list encrypted tablespaces: %w", err)
		}
	}
	return spaces, nil
}

// mariaTempSpaceID is SRV_TMP_SPACE_ID, MariaDB's temporary tablespace.
const mariaTempSpaceID = 0xfffffffe

// checkpointLSN returns the server's last checkpoint LSN, or 0 if it does
// not report one (MySQL). Every change below it is in the data files.
func checkpointLSN(ctx context.Context, db *sql.DB) (uint64, error) {
	var name string
	var lsn uint64
	err := db.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Innodb_lsn_last_checkpoint'").Scan(&name, &lsn)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint lsn: %w", classify(err))
	}
	return lsn, nil
}

// classifySpace decodes the FSP_FLAGS that matter here
// (storage/innobase/include/fsp0types.h of each server).
func classifySpace(sp *Space, mariaDB bool) {
	const (
		fcrc32Marker    = 1 << 4 // MariaDB full_crc32
		fcrc32CompAlgo  = 7 << 5 // MariaDB full_crc32: page_compressed algorithm
		zipSSize        = 0xf << 1
		mariaPageCompr  = 1 << 16 // MariaDB, not full_crc32: page_compressed
		mysqlTemporary  = 1 << 12
		mysqlEncryption = 1 << 13
	)
	f := sp.Flags
	switch {
	case mariaDB && f&fcrc32Marker != 0:
		sp.FullCRC32 = true
		if f&fcrc32CompAlgo != 0 {
			sp.Skip = "page_compressed"
		}
	case f&zipSSize != 0:
		sp.Skip = "row_compressed" // frames hold the uncompressed page, disk the zip page
	case mariaDB && f&mariaPageCompr != 0:
		sp.Skip = "page_compressed"
	case !mariaDB && f&mysqlEncryption != 0:
		sp.Skip = "encrypted"
	case !mariaDB && f&mysqlTemporary != 0:
		sp.Skip = "temporary"
	}
}

// findPID returns the pid of the server: pid if non-zero, else the pid in
// its pid file. The process must be a mysqld or mariadbd.
func findPID(s *Server, pid int) (int, error) {
	if pid == 0 {
		path := s.PIDFile
		if path != "" && !filepath.IsAbs(path) {
			path = filepath.Join(s.DataDir, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(permission(err), ErrPermission) {
				return 0, fmt.Errorf("read pid file: %w", permission(err))
			}
			return 0, fmt.Errorf("read pid file: %w: %w (pass the pid)", ErrNoProcess, err)
		}
		if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return 0, fmt.Errorf("read pid file %s: %w: %w", path, ErrNoProcess, err)
		}
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return 0, fmt.Errorf("find pid %d: %w: %w", pid, ErrNoProcess, err)
	}
	switch c := strings.TrimSpace(string(comm)); c {
	case "mysqld", "mariadbd":
		return pid, nil
	default:
		return 0, fmt.Errorf("pid %d is %q, not mysqld or mariadbd: %w", pid, c, ErrNoProcess)
	}
}

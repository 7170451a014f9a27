package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/digitalocean/go-qemu/qmp"
)

// Monitor is a QMP connection. go-qemu's qmp.SocketMonitor drops QMP's
// error class, takes no context and reads replies with a 64 KiB line limit
// (too small for `info mtree`); Monitor speaks the same protocol with those
// kept and implements go-qemu's qmp.Monitor, so go-qemu's Domain and raw
// packages can run over it. Commands may be issued from several goroutines;
// each waits for its own reply (matched by id).
type Monitor struct {
	conn    net.Conn
	Version qmp.Version

	wmu     sync.Mutex // serialises writes
	mu      sync.Mutex
	pending map[string]chan reply
	closed  chan struct{}
	readErr error // set before closed is closed
	nextID  atomic.Uint64

	events eventRecord
}

var _ qmp.Monitor = (*Monitor)(nil)

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

type message struct {
	reply
	ID    string          `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	QMP   *struct {
		Version qmp.Version `json:"version"`
	} `json:"QMP"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to the QMP unix socket at path and negotiates capabilities.
// The caller owns the Monitor and must Close it.
func Dial(ctx context.Context, path string) (*Monitor, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	m := &Monitor{conn: c, pending: map[string]chan reply{}, closed: make(chan struct{})}
	if err := m.handshake(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp handshake on %s: %w", path, err)
	}
	return m, nil
}

func (m *Monitor) handshake(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { m.conn.Close() })
	defer stop()
	dec := json.NewDecoder(m.conn)
	var greet message
	if err := dec.Decode(&greet); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if greet.QMP == nil {
		return errors.New("no QMP greeting")
	}
	m.Version = greet.QMP.Version
	go m.read(dec)
	return m.Execute(ctx, "qmp_capabilities", nil, nil)
}

func (m *Monitor) read(dec *json.Decoder) {
	var err error
	for {
		var msg message
		if err = dec.Decode(&msg); err != nil {
			break
		}
		if msg.Event != "" {
			m.record(&msg)
			continue
		}
		m.mu.Lock()
		ch := m.pending[msg.ID]
		delete(m.pending, msg.ID)
		m.mu.Unlock()
		if ch != nil {
			ch <- msg.reply
		}
	}
	m.readErr = fmt.Errorf("%w: %w", ErrMonitorClosed, err)
	m.events.close()
	close(m.closed)
}

// Execute runs command with args (nil: none) and decodes its return value
// into out (nil: ignored). A QMP error comes back as *CommandError.
func (m *Monitor) Execute(ctx context.Context, command string, args, out any) error {
	id := strconv.FormatUint(m.nextID.Add(1), 10)
	b, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id})
	if err != nil {
		return fmt.Errorf("encode qmp %s: %w", command, err)
	}
	ch := make(chan reply, 1)
	m.mu.Lock()
	m.pending[id] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
	}()
	m.wmu.Lock()
	_, err = m.conn.Write(append(b, '\n'))
	m.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("send qmp %s: %w", command, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return &CommandError{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		if out != nil {
			if err := json.Unmarshal(r.Return, out); err != nil {
				return fmt.Errorf("decode qmp %s reply: %w", command, err)
			}
		}
		return nil
	case <-m.closed:
		return fmt.Errorf("qmp %s: %w", command, m.readErr)
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", command, context.Cause(ctx))
	}
}

// HMP runs a human monitor command and returns its output.
func (m *Monitor) HMP(ctx context.Context, line string) (string, error) {
	var out string
	err := m.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out)
	return out, err
}

// Close closes the connection; commands in flight fail.
func (m *Monitor) Close() error { return m.conn.Close() }

// Connect is part of qmp.Monitor; Dial has already connected.
func (m *Monitor) Connect() error { return nil }

// Disconnect is Close, for qmp.Monitor.
func (m *Monitor) Disconnect() error { return m.Close() }

// Run is qmp.Monitor's untyped call: command is a JSON QMP command, the
// reply's JSON is returned. Prefer Execute.
func (m *Monitor) Run(command []byte) ([]byte, error) {
	var c struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(command, &c); err != nil {
		return nil, fmt.Errorf("decode qmp command: %w", err)
	}
	var args any
	if len(c.Arguments) > 0 {
		args = c.Arguments
	}
	var ret json.RawMessage
	if err := m.Execute(context.Background(), c.Execute, args, &ret); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]json.RawMessage{"return": ret})
}

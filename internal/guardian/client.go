package guardian

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Client is the migrating process's end of a guardian: it implements
// precopy.Guard. Its methods may be called from several goroutines.
type Client struct {
	cmd *exec.Cmd
	w   *os.File // the guardian's input
	out *os.File // the guardian's output
	rd  *bufio.Reader
	log hclog.Logger
	// running, if set, tells whether the guest runs; Pausing arms the
	// guardian only if it does.
	running func(context.Context) (bool, error)

	mu     sync.Mutex
	armed  bool
	closed bool
}

// Start runs cmd, the guardian command (its Watch reading standard input
// and writing its replies to standard output), in a session of its own, so
// that a signal to the caller's process group or terminal does not reach
// it, and returns once it is ready. running, if not nil, is asked before
// each pause whether the guest runs: a guest already stopped is not the
// guardian's to resume. cmd's Stderr is the caller's to set.
func Start(ctx context.Context, cmd *exec.Cmd, running func(context.Context) (bool, error), log hclog.Logger) (*Client, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start guardian: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("start guardian: %w", err)
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// The child has its copies; ours of its ends would hide its exit (and
	// ours of the input's read end would keep it from seeing our death).
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start guardian: %w", err)
	}
	c := &Client{cmd: cmd, w: inW, out: outR, rd: bufio.NewReader(outR), log: log, running: running}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	line, err := c.readLine(deadline)
	if err != nil || line != ReplyReady {
		c.cmd.Process.Kill()
		c.wait()
		if err == nil {
			err = fmt.Errorf("unexpected %q", line)
		}
		return nil, fmt.Errorf("start guardian: not ready: %w", err)
	}
	return c, nil
}

// Pid is the guardian's process id.
func (c *Client) Pid() int { return c.cmd.Process.Pid }

func (c *Client) readLine(deadline time.Time) (string, error) {
	if err := c.out.SetReadDeadline(deadline); err != nil {
		return "", err
	}
	line, err := c.rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func (c *Client) send(msg string) error {
	if c.closed {
		return errors.New("guardian already released")
	}
	// One short write to a pipe: atomic, whole or not at all.
	if _, err := c.w.Write([]byte(msg + "\n")); err != nil {
		return fmt.Errorf("tell guardian %s: %w", msg, err)
	}
	return nil
}

// Pausing arms the guardian before the guest is paused, unless the guest
// does not run (then it was not this migration that stopped it).
func (c *Client) Pausing(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running != nil {
		run, err := c.running(ctx)
		if err != nil {
			return fmt.Errorf("check the guest runs: %w", err)
		}
		if !run {
			c.log.Warn("the guest is already stopped: the guardian will not resume it")
			return nil
		}
	}
	if err := c.send(MsgPausing); err != nil {
		return err
	}
	c.armed = true
	return nil
}

// Going tells the guardian Go is about to be sent: from now on it leaves
// the guest paused. An error means the guardian may not know: do not send
// Go.
func (c *Client) Going(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.armed {
		return nil
	}
	return c.send(MsgGo)
}

// Done ends the guardian: nothing is left for it to do (the migration
// completed, failed after Go, or resumed the guest itself).
func (c *Client) Done() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	err := c.send(MsgDone)
	c.closed = true
	c.w.Close()
	if _, rerr := c.readLine(time.Now().Add(5 * time.Second)); rerr != nil && err == nil {
		err = fmt.Errorf("guardian: %w", rerr)
	}
	c.out.Close()
	c.wait()
	return err
}

// Release hands the guest to the guardian as if this process had died: if
// it was paused and Go not sent, the guardian resumes it (after the caller
// closed whatever connection to the guest the guardian needs, such as a
// QMP socket). Release waits for the guardian's verdict, at most until
// ctx ends.
func (c *Client) Release(ctx context.Context) (Verdict, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return Untouched, errors.New("guardian already released")
	}
	c.closed = true
	c.w.Close()
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		deadline = d
	}
	line, err := c.readLine(deadline)
	c.out.Close()
	if err != nil {
		return Failed, fmt.Errorf("guardian: no verdict: %w", err)
	}
	c.wait()
	v, detail, _ := strings.Cut(line, " ")
	if Verdict(v) == Failed {
		return Failed, fmt.Errorf("guardian: %s", detail)
	}
	return Verdict(v), nil
}

// wait reaps the guardian, which exits on its own once it has acted.
func (c *Client) wait() {
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		c.log.Warn("guardian did not exit", "pid", c.cmd.Process.Pid)
	}
}

// Serve is the guardian process's body: it writes ReplyReady to out,
// watches in, and writes its verdict to out ("failed REASON" on failure).
// It takes no context: no signal may make the guardian leave its guest
// stopped; it ends when the migration does. The caller ignores SIGPIPE: a
// log or verdict written to a reader that died with the migration must not
// kill the guardian before it acted.
func Serve(in *os.File, out *os.File, t Target, o Options) (Verdict, error) {
	if _, err := fmt.Fprintln(out, ReplyReady); err != nil {
		return Untouched, fmt.Errorf("guardian: the migrating process ended before its guardian was ready (it paused nothing): %w", err)
	}
	v, err := Watch(in, t, o)
	line := string(v)
	if err != nil {
		line += " " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	// The migrating process may be gone: nobody reads, and that is fine.
	fmt.Fprintln(out, line)
	return v, err
}

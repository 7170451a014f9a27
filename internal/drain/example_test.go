package drain

import "testing"

// TestExampleConfig keeps contrib/drain.example.yaml loadable.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../contrib/drain.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.VMs) != 2 || c.VMs[0].Downtime.Milliseconds() != 50 || c.VMs[1].PidFile == "" || c.LockDir != "/run/dmig" {
		t.Fatalf("example config parsed as %+v", c)
	}
}

package drain

import "testing"

// TestExampleConfig keeps contrib/drain.example.yaml loadable.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../contrib/drain.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.VMs) != 3 || c.VMs[0].Downtime.Milliseconds() != 50 || c.VMs[0].QMP == "" || !c.VMs[1].Template() || c.VMs[2].PidFile == "" ||
		c.LockDir != "/run/dmig" || c.Destinations["host-b.example:7070"].MaxConcurrent != 1 ||
		c.Destinations["host-b.example:7070"].MaxBandwidth != 200_000_000 || c.VMs[0].MaxBandwidth != 125_000_000 || c.MaxBandwidth != 250_000_000 {
		t.Fatalf("example config parsed as %+v", c)
	}
}

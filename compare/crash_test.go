package compare

import "testing"

func TestCrashedGuestIsNotOK(t *testing.T) {
	m := Migration{GuestCrash: "Kernel panic - not syncing"}
	if m.OK() {
		t.Error("a migration after which the guest crashed is OK")
	}
}

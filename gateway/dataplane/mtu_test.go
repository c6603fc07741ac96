package dataplane

import (
	"strings"
	"testing"
)

func TestPathMTU(t *testing.T) {
	for _, c := range []struct {
		outer     int
		v6        bool
		overheads []int
		want      int
	}{
		{1500, false, []int{WireGuardOverhead}, 1440},
		{1500, true, []int{WireGuardOverhead}, 1420}, // wg-quick's default
		{1500, false, []int{VXLANOverhead}, 1450},    // the kernel's VXLAN default
		{1500, false, []int{WireGuardOverhead, VXLANOverhead}, 1390},
		{9000, false, []int{WireGuardOverhead}, 8940},
		{1500, false, nil, 1500},
	} {
		got, err := PathMTU(c.outer, c.v6, c.overheads...)
		if err != nil || got != c.want {
			t.Errorf("PathMTU(%d, v6=%v, %v) = %d, %v; want %d", c.outer, c.v6, c.overheads, got, err, c.want)
		}
	}
	if _, err := PathMTU(1300, false, WireGuardOverhead); err == nil || !strings.Contains(err.Error(), "1280") {
		t.Errorf("too small: %v", err)
	}
}

func TestFakeRendersState(t *testing.T) {
	f := NewFake()
	f.Apply(t.Context(), End{ID: "b", NetNS: "w", Interface: "nsm0", MTU: 1420})
	f.Apply(t.Context(), End{ID: "a", NetNS: "w", Interface: "nsm1", MTU: 1450, VXLAN: &VXLAN{VNI: 7}})
	want := "a netns=w dev=nsm1 mtu=1450 addrs=[] routes=[] vxlan=7 invalid IP->invalid IP:4789\nb netns=w dev=nsm0 mtu=1420 addrs=[] routes=[]"
	if got := f.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	f.Remove(t.Context(), "a")
	if strings.Contains(f.String(), "a netns") {
		t.Error("Remove left the end")
	}
}

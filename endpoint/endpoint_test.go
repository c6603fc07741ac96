package endpoint

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/proxy/proxypb"
)

func request(t *testing.T, e *Endpoint, id string, ipc *proxypb.IPContext) (*proxypb.Connection, error) {
	t.Helper()
	return e.Request(context.Background(), &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{Id: id, IpContext: ipc}})
}

// Each connection gets its own pair; a closed one's pair is handed out
// again, but only once the others are taken; a full prefix says so; a
// refresh keeps the pair.
func TestPairs(t *testing.T) {
	e, err := New("10.0.0.0/29", "ns1", "IP")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{"c1": {"10.0.0.2/32", "10.0.0.3/32"}, "c2": {"10.0.0.4/32", "10.0.0.5/32"}, "c3": {"10.0.0.6/32", "10.0.0.7/32"}}
	for _, id := range []string{"c1", "c2", "c3"} {
		c, err := request(t, e, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := [2]string{c.GetIpContext().GetSrcIpAddrs()[0], c.GetIpContext().GetDstIpAddrs()[0]}
		if got != want[id] {
			t.Errorf("%s got %v, want %v", id, got, want[id])
		}
		if k := c.GetMechanism().GetKernel(); k.GetNetns() != "ns1" || k.GetInterfaceName() != Interface(id) {
			t.Errorf("%s mechanism %v", id, k)
		}
	}
	_, err = request(t, e, "c4", nil)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a fourth pair from a /29: %v, want ResourceExhausted", err)
	}
	t.Log(err)
	again, _ := request(t, e, "c2", nil)
	if again.GetIpContext().GetSrcIpAddrs()[0] != "10.0.0.4/32" {
		t.Errorf("a refresh moved c2 to %v", again.GetIpContext())
	}
	e.Close(context.Background(), &proxypb.Connection{Id: "c2"})
	c4, err := request(t, e, "c4", nil)
	if err != nil || c4.GetIpContext().GetSrcIpAddrs()[0] != "10.0.0.4/32" {
		t.Errorf("after closing c2, c4 got %v, %v", c4.GetIpContext(), err)
	}
	// With room to spare, the pair just freed waits its turn.
	e, _ = New("10.0.0.0/28", "ns1", "IP")
	src := func(id string) string {
		c, err := request(t, e, id, nil)
		if err != nil {
			return err.Error()
		}
		return c.GetIpContext().GetSrcIpAddrs()[0]
	}
	for _, id := range []string{"c1", "c2", "c3"} {
		src(id)
	}
	e.Close(context.Background(), &proxypb.Connection{Id: "c1"})
	var got []string
	for _, id := range []string{"c4", "c5", "c6", "c7", "c8"} {
		got = append(got, src(id))
	}
	if want := []string{"10.0.0.8/32", "10.0.0.10/32", "10.0.0.12/32", "10.0.0.14/32", "10.0.0.2/32"}; !slices.Equal(got, want) {
		t.Errorf("after closing c1: %v, want %v", got, want)
	}
	if _, err := request(t, e, "c9", nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("an eighth pair from a /28: %v", err)
	}
}

// An endpoint that restarted takes back the pair a refresh names.
func TestRefreshAfterRestartKeepsItsPair(t *testing.T) {
	e, _ := New("10.0.0.0/24", "ns1", "ETHERNET")
	c, err := request(t, e, "c9", &proxypb.IPContext{SrcIpAddrs: []string{"10.0.0.20/31"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.GetIpContext().GetDstIpAddrs()[0]; got != "10.0.0.21/31" {
		t.Errorf("got %s, want the hinted pair's 10.0.0.21/31 (an Ethernet link's /31)", got)
	}
	other, _ := request(t, e, "c10", &proxypb.IPContext{SrcIpAddrs: []string{"10.0.0.20/31"}})
	if other.GetIpContext().GetSrcIpAddrs()[0] == "10.0.0.20/31" {
		t.Error("two connections share a pair")
	}
}

func TestBadPrefixes(t *testing.T) {
	for _, c := range []struct{ cidr, payload string }{{"10.0.0.1/24", "IP"}, {"10.0.0.0/31", "IP"}, {"nope", "IP"}, {"10.0.0.0/24", "MPLS"}} {
		if _, err := New(c.cidr, "ns", c.payload); err == nil {
			t.Errorf("New(%q, %q) accepted", c.cidr, c.payload)
		} else {
			t.Log(err)
		}
	}
}

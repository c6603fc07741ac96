package sandbox

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// rawCodec sends a message's bytes as they are, so that what the fuzzer
// makes reaches the server's own decoder (it names itself "proto": the
// server decodes with its protobuf codec).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Name() string                  { return "proto" }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// isRegistration says whether method registers, refreshes or removes an
// endpoint.
func isRegistration(method string) bool {
	switch method {
	case registrypb.Registry_RegisterEndpoint_FullMethodName, registrypb.Registry_RefreshEndpoint_FullMethodName,
		registrypb.Registry_UnregisterEndpoint_FullMethodName:
		return true
	}
	return false
}

// edgeMethods are what a federated peer may call (domain's peerMethods).
var edgeMethods = []string{
	registrypb.Registry_Find_FullMethodName,
	registrypb.Registry_RegisterEndpoint_FullMethodName,
	registrypb.Registry_RefreshEndpoint_FullMethodName,
	registrypb.Registry_UnregisterEndpoint_FullMethodName,
	proxypb.NetworkService_Request_FullMethodName,
	proxypb.NetworkService_Close_FullMethodName,
}

// Every request handler of the public edge, fed what a hostile peer's
// proxy may send (any bytes, decoded by the server as it decodes a real
// request): the domain neither crashes nor takes a registration from a
// peer it takes none from, another domain's connection stays, and the
// domain keeps answering. `make test` runs the seeds; `make fuzz` runs it
// for longer.
func FuzzPeerEdge(f *testing.F) {
	s := NewWith(f, func(c *domain.Config) {
		c.PeerLimits.Concurrent, c.PeerLimits.Rate, c.PeerLimits.Burst = 1000, 1e6, 1e6 // the fuzzer, not the limiter
	}, "a.example", "b.example", "c.example")
	a, b, c := s.D("a.example"), s.D("b.example"), s.D("c.example")
	b.Apply(reference)
	victim, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
	if err != nil {
		f.Fatal(err)
	}
	p, _ := c.Peers.Lookup("b.example")
	conn, err := federation.DialPeer(b.Addr().String(), c.Identity, "c.example", p)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })

	ep := &registrypb.Endpoint{Name: "x", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Labels: map[string]string{"app": "firewall"}, Url: "tcp://127.0.0.1:1"}
	seeds := [][]byte{
		mustMarshal(&registrypb.FindRequest{Service: "secure-intranet-connectivity", SourceLabels: map[string]string{"app": "firewall"}}),
		mustMarshal(&registrypb.RegisterEndpointRequest{Endpoint: ep}),
		mustMarshal(&registrypb.RefreshEndpointRequest{Name: "firewall-1"}),
		mustMarshal(&registrypb.UnregisterEndpointRequest{Name: "firewall-1"}),
		mustMarshal(&proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{Id: victim.GetId(), NetworkService: "secure-intranet-connectivity"}}),
		mustMarshal(&proxypb.Connection{Id: victim.GetId()}),
	}
	for i, seed := range seeds {
		f.Add(uint8(i), seed)
	}
	f.Add(uint8(0), []byte{0x0a, 0x03, 0xff, 0xfe, 0xfd})                // invalid UTF-8 in a string
	f.Add(uint8(4), []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})          // a length past the message
	f.Add(uint8(1), append(bytesOf(0x0b, 2000), bytesOf(0x0c, 2000)...)) // groups nested 2,000 deep
	f.Add(uint8(5), []byte("not a protobuf at all"))
	f.Fuzz(func(t *testing.T, which uint8, msg []byte) {
		method := edgeMethods[int(which)%len(edgeMethods)]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		var out []byte
		if method == registrypb.Registry_Find_FullMethodName {
			var st grpc.ClientStream
			if st, err = conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method, grpc.ForceCodec(rawCodec{})); err == nil {
				if err = st.SendMsg(&msg); err == nil {
					st.CloseSend()
					err = st.RecvMsg(&out)
				}
			}
		} else {
			err = conn.Invoke(ctx, method, &msg, &out, grpc.ForceCodec(rawCodec{}))
		}
		if isRegistration(method) && err == nil {
			t.Fatalf("b took %s from c, which it takes no registrations from: %x", method, msg)
		}
		if code := status.Code(err); code == codes.DeadlineExceeded {
			t.Fatalf("%s did not answer within 10 s: %x", method, msg)
		}
		if !b.Knows(victim.GetId()) {
			t.Fatalf("a's connection is gone from b after %s %x", method, msg)
		}
	})
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

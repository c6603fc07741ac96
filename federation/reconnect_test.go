package federation

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A call right after the other side restarted goes through, although the
// connection was backing off from the calls that failed while it was down.
func TestReconnectAfterRestart(t *testing.T) {
	serve := func(addr string) (*grpc.Server, string) {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(lis)
		return srv, lis.Addr().String()
	}
	srv, addr := serve("127.0.0.1:0")
	conn, err := grpc.NewClient(addr, WithReconnect(grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
		check() // fail, and back off further
	}
	srv, _ = serve(addr)
	defer srv.Stop()
	if err := check(); err != nil {
		t.Errorf("the first call after the restart: %v", err)
	}
}

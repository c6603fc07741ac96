package registry_test

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// fakeWorkloadAPI stands in for a SPIRE agent: it hands every caller the
// SVIDs of the listed IDs, issued by ca, with ca's bundle.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	ca  *federation.CA
	ids []spiffeid.ID
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	resp := &workload.X509SVIDResponse{}
	for _, id := range f.ids {
		svid, err := f.ca.Issue(id, time.Hour)
		if err != nil {
			return err
		}
		key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
		if err != nil {
			return err
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    id.String(),
			X509Svid:    svid.Certificates[0].Raw,
			X509SvidKey: key,
			Bundle:      f.ca.Bundle().X509Authorities()[0].Raw,
		})
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// With --spiffe-socket the registry takes its SVID from the Workload API,
// and picks its own ID when the agent hands it several.
func TestRegistryWithWorkloadAPI(t *testing.T) {
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("a.example")
	ca, err := federation.OpenCA(filepath.Join(dir, "spire-ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, &fakeWorkloadAPI{ca: ca, ids: []spiffeid.ID{
		spiffeid.RequireFromPath(td, "/other-workload"), federation.RegistryID(td),
	}})
	go srv.Serve(lis)
	defer srv.Stop()

	cfg := registry.NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen, cfg.SpiffeSocket = "a.example", filepath.Join(dir, "data"), "127.0.0.1:0", sock
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg, err := registry.Start(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	// Registry.Dial accepts only the registry's (or proxy's) ID: a call
	// that works proves the registry presented the SVID it picked.
	adminDir := filepath.Join(dir, "admin")
	if err := ca.WriteCredentials(adminDir, federation.AdminID(td), time.Hour); err != nil {
		t.Fatal(err)
	}
	cl := dialCredentials(t, reg.Addr().String(), adminDir)
	if _, err := cl.ListServices(c, &registrypb.ListServicesRequest{}); err != nil {
		t.Fatalf("call to the registry on SPIRE SVIDs: %v", err)
	}
}

#!/usr/bin/env bash
# Start the local single-node Kubernetes cluster (needs root).
#   kubeconfig:      $KINFER_CLUSTER_DIR/kubeconfig   (default ~/.cache/kinfer/cluster/kubeconfig)
#   S3 credentials:  $KINFER_CLUSTER_DIR/s3.env       (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                                                      AWS_REGION, S3_ENDPOINT, S3_BUCKET)
# Builds missing binaries first (build.sh), installs the Debian packages it needs, and exits 0
# at once if the cluster is already up and healthy. Undo with down.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
REPO_ROOT="${KINFER_REPO_ROOT:-$(cd "$HERE/../../.." && pwd)}"   # crds/ is applied from here
[[ $EUID == 0 ]] || die "cluster-up needs root (it runs containerd, kubelet and changes iptables)"
T0=$SECONDS
D="$KINFER_CLUSTER_DIR"

# ---------------------------------------------------------------- prerequisites
APT_PKGS=(containerd runc containernetworking-plugins iptables conntrack ethtool socat openssl iproute2 curl)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
"$HERE/build.sh" all

if [[ -f "$D/up.done" ]]; then
  ok=1
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy s3; do
    running "$p" || ok=0
  done
  if [[ $ok == 1 ]] && kc get --raw /readyz >/dev/null 2>&1; then
    log "cluster already up (KUBECONFIG=$KUBECONFIG_PATH)"; exit 0
  fi
  log "cluster state is stale or partial: tearing it down first"
fi
[[ -d "$D" ]] && "$HERE/down.sh"

mkdir -p "$D"/{pki,pids,logs,etcd,kubelet,containerd/root,run/containerd,run/runc,cni/net.d,cni/ipam,s3/data,tmp}
chmod 700 "$D"
wait_for() { # description timeout-seconds cmd...
  local what=$1 t=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > end)); then
      log "timed out waiting for $what"; return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- host network
# The node address lives on a link made for the cluster (kinfer0, a bridge with no ports): the API
# server, the kubelet and the S3 server listen there (pods cannot reach the host's 127.0.0.1, and
# the kubelet refuses a loopback node IP). The Service range is routed to that link too, so a Service packet that
# kube-proxy does not translate is dropped here instead of leaving the machine; pod traffic is only
# forwarded within cni0 (see the KINFER-GUARD rule).
cat /proc/sys/net/ipv4/ip_forward >"$D/ip_forward.orig"
ls /run/netns 2>/dev/null | sort >"$D/netns.before" || true
for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] || echo "$p"; done >"$D/host-paths.created"
ip link add kinfer0 type bridge 2>/dev/null || true   # no dummy driver in this kernel: a port-less bridge
ip addr replace "$NODE_IP/32" dev kinfer0
ip link set kinfer0 up
ip route replace "$SERVICE_CIDR" dev kinfer0 src "$NODE_IP"
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null || true
iptables -N KINFER-GUARD 2>/dev/null || iptables -F KINFER-GUARD
iptables -A KINFER-GUARD -i cni0 -o cni0 -j RETURN
iptables -A KINFER-GUARD -i cni0 -j DROP
iptables -C FORWARD -j KINFER-GUARD 2>/dev/null || iptables -I FORWARD 1 -j KINFER-GUARD

# ---------------------------------------------------------------- certificates
P="$D/pki"
export OPENSSL_CONF=/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 3650 \
  -subj "/CN=kinfer-local-ca" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/front-proxy-ca.key" -out "$P/front-proxy-ca.crt" \
  -days 3650 -subj "/CN=kinfer-front-proxy-ca" 2>/dev/null
cert() { # name CN O "SANs" usage [ca]
  local n=$1 cn=$2 o=$3 sans=$4 usage=$5 ca=${6:-ca} subj="/CN=$2"
  [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
  openssl req -newkey rsa:2048 -nodes -keyout "$P/$n.key" -out "$P/$n.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$P/$n.ext"
  openssl x509 -req -in "$P/$n.csr" -CA "$P/$ca.crt" -CAkey "$P/$ca.key" -CAcreateserial \
    -out "$P/$n.crt" -days 3650 -extfile "$P/$n.ext" 2>/dev/null
  rm -f "$P/$n.csr" "$P/$n.ext"
}
cert apiserver kube-apiserver "" \
  "IP:$NODE_IP,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" serverAuth
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
cert admin kinfer-admin system:masters "" clientAuth
cert controller-manager system:kube-controller-manager "" "" clientAuth
cert scheduler system:kube-scheduler "" "" clientAuth
cert kube-proxy system:kube-proxy "" "" clientAuth
cert front-proxy-client front-proxy-client "" "" clientAuth front-proxy-ca
cert kubelet-client "system:node:$NODE_NAME" system:nodes "" clientAuth
cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME,DNS:localhost" serverAuth
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
chmod 600 "$P"/*.key

kubeconfig() { # file user cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kinfer
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$P/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$P/$3.crt")
    client-key-data: $(base64 -w0 "$P/$3.key")
contexts:
- name: kinfer
  context: {cluster: kinfer, user: $2}
current-context: kinfer
EOF
  chmod 600 "$1"
}
kubeconfig "$KUBECONFIG_PATH" kinfer-admin admin
kubeconfig "$D/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$D/scheduler.kubeconfig" system:kube-scheduler scheduler
kubeconfig "$D/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
kubeconfig "$D/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client

# ---------------------------------------------------------------- etcd + control plane
start etcd "$ETCD_BIN/etcd" --name kinfer --data-dir "$D/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "kinfer=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
  --unsafe-no-fsync --snapshot-count 10000 --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_CLIENT_PORT/health" || fail_with_log etcd "etcd did not start"

start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$P/ca.crt" --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" --kubelet-client-key "$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$P/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --requestheader-client-ca-file "$P/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
  --allow-privileged=true --profiling=false --endpoint-reconciler-type lease --v 1
apiserver_ready() { curl -sf --cacert "$P/ca.crt" "https://$NODE_IP:$APISERVER_PORT/readyz"; }
wait_for kube-apiserver 90 apiserver_ready || fail_with_log kube-apiserver "kube-apiserver not ready"

# --node-monitor-grace-period: the e2e stops the only API server for 30 s (test_7). With the default
# (50 s) the node's lease, last renewed before the stop, is older than that when the API server is
# ready again, so the node lifecycle controller marks the node Unknown and every pod NotReady for
# a few seconds: the Service loses its endpoints because of the outage's length, not anything
# kinfer does. 120 s keeps that Kubernetes reaction out of the test (docs/operations.md says what
# a real cluster does).
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$D/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$D/controller-manager.kubeconfig" --authorization-kubeconfig "$D/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
  --root-ca-file "$P/ca.crt" --service-account-private-key-file "$P/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false \
  --node-monitor-grace-period 120s --v 1
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$D/scheduler.kubeconfig" \
  --authentication-kubeconfig "$D/scheduler.kubeconfig" --authorization-kubeconfig "$D/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v 1

# ---------------------------------------------------------------- node: containerd + CNI
cat >"$D/cni/net.d/10-kinfer.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kinfer",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$D/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
cat >"$D/containerd.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kinfer.local/pause:3.10"
  disable_apparmor = true
  # This host's root lacks CAP_SYS_RESOURCE (not in the bounding set), so no process may lower its
  # oom_score_adj: runc would fail to set the sandbox's -998 ("failed to update
  # /proc/self/oom_score_adj: Permission denied"). Clamp container scores to containerd's own.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$D/run/runc"
        BinaryName = "${KINFER_RUNC:-runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
    max_conf_num = 1
EOF
start containerd containerd --config "$D/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version || fail_with_log containerd "containerd did not start"
"$HERE/images.sh" load

# ---------------------------------------------------------------- node: kubelet + kube-proxy
cat >"$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0          # -999 (the default) needs CAP_SYS_RESOURCE, which this host withholds
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
# CPU pinning for real (README.md, "CPU pinning"): the static CPU manager gives a Guaranteed pod
# with whole CPUs a cpuset of its own. The reservation rounds up to whole CPUs (CPU 0), which stay
# in the shared pool with the control plane; 10m is the least it takes, so 1990m is allocatable.
cpuManagerPolicy: static
cpuManagerReconcilePeriod: 10s
systemReserved: {cpu: 10m}
EOF
# The kubelet refuses a checkpoint written under another policy.
rm -f "$D/kubelet/cpu_manager_state"
start kubelet "$K8S_BIN/kubelet" --config "$D/kubelet.yaml" --kubeconfig "$D/kubelet.kubeconfig" \
  --root-dir "$D/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1

cat >"$D/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/kube-proxy.kubeconfig}
mode: iptables
oomScoreAdj: 0
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["primary"]
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables: {syncPeriod: 30s, minSyncPeriod: 0s}
EOF
start kube-proxy "$K8S_BIN/kube-proxy" --config "$D/kube-proxy.yaml" --v 1

node_ready() { kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
wait_for "node $NODE_NAME Ready" 120 node_ready || fail_with_log kubelet "node $NODE_NAME did not become Ready"
wait_for kube-proxy 30 curl -sf http://127.0.0.1:10256/healthz || fail_with_log kube-proxy "kube-proxy not healthy"
# Pods need the default ServiceAccount before they can be created.
wait_for "default service account" 60 kc get serviceaccount default -n default || fail_with_log kube-controller-manager "no default ServiceAccount"

# ---------------------------------------------------------------- S3 (SeaweedFS `weed mini`)
S3_AK="kinfer$(openssl rand -hex 6)"
S3_SK="$(openssl rand -hex 20)"
cat >"$D/s3/identities.json" <<EOF
{"identities": [{"name": "kinfer", "credentials": [{"accessKey": "$S3_AK", "secretKey": "$S3_SK"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
cat >"$S3_CREDS_PATH" <<EOF
# S3 server of the local cluster (SeaweedFS $SEAWEEDFS_VERSION). Reachable from the host and from pods.
AWS_ACCESS_KEY_ID=$S3_AK
AWS_SECRET_ACCESS_KEY=$S3_SK
AWS_REGION=us-east-1
S3_ENDPOINT=http://$NODE_IP:$S3_PORT
S3_BUCKET=$S3_BUCKET
EOF
chmod 600 "$S3_CREDS_PATH" "$D/s3/identities.json"
mkdir -p "$D/logs/s3"
start s3 env TMPDIR="$D/tmp" "$S3_BIN/weed" -logdir "$D/logs/s3" mini -dir "$D/s3/data" -ip "$NODE_IP" -ip.bind "$NODE_IP" \
  -s3.localSocket "$D/run/s3.sock" -filer.localSocket "$D/run/filer.sock" \
  -s3.port "$S3_PORT" -s3.config "$D/s3/identities.json" -bucket "$S3_BUCKET" \
  -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.volumeSizeLimitMB 64
# Ready when a signed-less request to the bucket gets an S3 answer (403 AccessDenied).
s3_ready() { local c; c=$(curl -s -o /dev/null -w '%{http_code}' "http://$NODE_IP:$S3_PORT/$S3_BUCKET/"); [[ $c == 403 ]]; }
wait_for "S3 on $NODE_IP:$S3_PORT" 90 s3_ready || fail_with_log s3 "S3 server not ready"

# ---------------------------------------------------------------- CRDs
shopt -s nullglob
crds=("$REPO_ROOT"/crds/*.yaml "$REPO_ROOT"/crds/*.yml "$REPO_ROOT"/crds/*.json)
if ((${#crds[@]})); then
  log "applying ${#crds[@]} CRD file(s) from crds/"
  kc apply -f "$REPO_ROOT/crds/" >/dev/null
  kc wait --for condition=Established --timeout 60s crd --all >/dev/null
fi

touch "$D/up.done"
log "cluster up in $((SECONDS - T0))s"
log "  export KUBECONFIG=$KUBECONFIG_PATH"
log "  S3 credentials: $S3_CREDS_PATH"
log "  kubectl: $K8S_BIN/kubectl   helm: $HELM_BIN/helm"

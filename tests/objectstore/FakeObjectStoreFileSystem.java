package promptscore.testfs;

import java.io.BufferedOutputStream;
import java.io.File;
import java.io.FileNotFoundException;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.io.RandomAccessFile;
import java.lang.management.ManagementFactory;
import java.net.SocketException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.BufferedFSInputStream;
import org.apache.hadoop.fs.EtagSource;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FSInputStream;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.ParentNotDirectoryException;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.PathIsNotEmptyDirectoryException;
import org.apache.hadoop.fs.RemoteIterator;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * An object store for tests: {@code oss://bucket/key} is the file {@code <root>/bucket/key}, with
 * the behaviour of OSS (and of JindoSDK/S3A on top of it) rather than of a disk.
 *
 * <ul>
 *   <li>Keys are flat: a directory exists only while some key has its prefix, or while a marker
 *       object made by {@code mkdirs} holds it.</li>
 *   <li>Listings come in pages of {@code fs.oss.emu.list.page.size} (1,000) entries, one request
 *       each; {@code listFiles(path, true)} is one flat listing of every key under the prefix.</li>
 *   <li>An object appears whole when its writer closes (never half written); a rename is a copy and
 *       a delete per object, so a directory rename is not atomic.</li>
 *   <li>Every request sleeps {@code fs.oss.emu.delay.<op>.ms} (default {@code fs.oss.emu.delay.ms},
 *       else 0) and is counted per op in this JVM: head, list, open, create, rename (one per object
 *       copied), delete. {@link #counts()} reads them; with {@code fs.oss.emu.counters.file} set,
 *       the JVM appends its counts to that file as one JSON line when it exits.</li>
 *   <li>A file status carries the object's ETag (Hadoop's {@code EtagSource}): the hex MD5 of its
 *       bytes, as OSS gives for an object written in one PUT.</li>
 *   <li>Buckets and keys are checked as OSS checks them; with {@code fs.oss.emu.require.credentials}
 *       a client without an AccessKey (in the URI, {@code fs.oss.accessKeyId}/{@code Secret} or the
 *       OSS_ACCESS_KEY_ID/SECRET environment) is refused.</li>
 *   <li>Transient faults: with {@code fs.oss.emu.fail.rate} (a fraction) that share of the requests
 *       of the ops in {@code fs.oss.emu.fail.ops} (default {@code head,list,open,read}) fails as OSS
 *       fails under load: {@code open}, {@code head} and {@code list} with a 503 "SlowDown"
 *       IOException, {@code read} (a GET's body) with a connection reset half way through. Only keys
 *       under {@code fs.oss.emu.fail.prefix} (default: all). Which requests fail is fixed by
 *       {@code fs.oss.emu.fail.seed}, the op, the key and how many times that op was made on that
 *       key since {@link #resetCounts()}, whatever the order of threads. {@link #failures()} counts
 *       them.</li>
 * </ul>
 */
public class FakeObjectStoreFileSystem extends FileSystem {
    public static final String PREFIX = "fs.oss.emu.";
    /** The file that stands for the marker object {@code dir/}; never listed as a key. */
    static final String MARKER = ".fake-oss-dir-marker";
    static final String[] OPS = {"head", "list", "open", "create", "rename", "delete"};
    private static final long BLOCK_SIZE = 128L << 20;
    private static final Pattern BUCKET = Pattern.compile("[a-z0-9][a-z0-9-]{1,61}[a-z0-9]");
    private static final Map<String, AtomicLong> COUNTS = new ConcurrentHashMap<>();
    private static final Map<String, AtomicLong> SEEN = new ConcurrentHashMap<>();
    private static final AtomicLong FAILED = new AtomicLong();
    private static final AtomicBoolean DUMP_REGISTERED = new AtomicBoolean();

    private URI uri;
    private Path workingDir;
    private File base;
    private File staging;
    private int pageSize;
    private long failRenameAfter;
    private double failRate;
    private long failSeed;
    private String failPrefix = "";
    private final java.util.Set<String> failOps = new java.util.HashSet<>();
    private final Map<String, Long> delays = new TreeMap<>();

    /** The requests of each kind this JVM has made, by op name. */
    public static Map<String, Long> counts() {
        Map<String, Long> out = new TreeMap<>();
        for (String op : OPS) {
            out.put(op, count(op));
        }
        return out;
    }

    /** The requests of one kind this JVM has made. */
    public static long count(String op) {
        AtomicLong n = COUNTS.get(op);
        return n == null ? 0 : n.get();
    }

    /** Set every counter of this JVM back to zero. */
    public static void resetCounts() {
        COUNTS.clear();
        SEEN.clear();
        FAILED.set(0);
    }

    /** The requests this JVM made fail on purpose ({@code fs.oss.emu.fail.rate}). */
    public static long failures() {
        return FAILED.get();
    }

    @Override
    public void initialize(URI name, Configuration conf) throws IOException {
        super.initialize(name, conf);
        setConf(conf);
        String host = name.getHost() != null ? name.getHost() : name.getAuthority();
        String bucket = host == null ? "" : host.split("\\.", 2)[0];
        if (!BUCKET.matcher(bucket).matches()) {
            throw new IOException("invalid bucket name '" + bucket + "' in " + name
                + ": 3-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit");
        }
        String root = conf.get(PREFIX + "root");
        if (root == null || root.isEmpty()) {
            throw new IOException(PREFIX + "root is not set: the local directory that holds the buckets");
        }
        if (conf.getBoolean(PREFIX + "require.credentials", false) && !hasCredentials(name, conf)) {
            throw new IOException("no AccessKey for oss://" + bucket
                + " (fs.oss.accessKeyId/fs.oss.accessKeySecret or OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET)");
        }
        uri = URI.create(name.getScheme() + "://" + name.getRawAuthority());
        workingDir = new Path(uri.toString() + "/");
        base = new File(root, bucket);
        staging = new File(root, ".staging");
        Files.createDirectories(base.toPath());
        Files.createDirectories(staging.toPath());
        pageSize = conf.getInt(PREFIX + "list.page.size", 1000);
        failRenameAfter = conf.getLong(PREFIX + "fail.rename.after", -1);
        failRate = conf.getDouble(PREFIX + "fail.rate", 0.0);
        failSeed = conf.getLong(PREFIX + "fail.seed", 0);
        failPrefix = conf.get(PREFIX + "fail.prefix", "");
        for (String op : conf.get(PREFIX + "fail.ops", "head,list,open,read").split(",")) {
            failOps.add(op.trim());
        }
        long all = conf.getLong(PREFIX + "delay.ms", 0);
        for (String op : OPS) {
            delays.put(op, conf.getLong(PREFIX + "delay." + op + ".ms", all));
        }
        String dump = conf.get(PREFIX + "counters.file");
        if (dump != null && !dump.isEmpty() && DUMP_REGISTERED.compareAndSet(false, true)) {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> appendCounts(new File(dump))));
        }
    }

    private static boolean hasCredentials(URI name, Configuration conf) {
        String info = name.getRawUserInfo();
        if (info != null && info.contains(":")) {
            return true;
        }
        String id = conf.get("fs.oss.accessKeyId", System.getenv("OSS_ACCESS_KEY_ID"));
        String secret = conf.get("fs.oss.accessKeySecret", System.getenv("OSS_ACCESS_KEY_SECRET"));
        return id != null && !id.isEmpty() && secret != null && !secret.isEmpty();
    }

    private static void appendCounts(File file) {
        StringBuilder line = new StringBuilder("{\"pid\": "
            + ManagementFactory.getRuntimeMXBean().getName().split("@")[0]);
        for (Map.Entry<String, Long> e : counts().entrySet()) {
            line.append(", \"").append(e.getKey()).append("\": ").append(e.getValue());
        }
        line.append("}\n");
        try {
            // One write with O_APPEND: lines of several JVMs never interleave.
            Files.write(file.toPath(), line.toString().getBytes(StandardCharsets.UTF_8),
                StandardOpenOption.CREATE, StandardOpenOption.APPEND, StandardOpenOption.WRITE);
        } catch (IOException e) {
            System.err.println("fake oss: cannot append counters to " + file + ": " + e);
        }
    }

    @Override
    public String getScheme() {
        return "oss";
    }

    @Override
    public URI getUri() {
        return uri;
    }

    @Override
    public Path getWorkingDirectory() {
        return workingDir;
    }

    @Override
    public void setWorkingDirectory(Path dir) {
        workingDir = makeQualified(dir);
    }

    @Override
    public String getCanonicalServiceName() {
        return null;
    }


    // ---- keys and the local tree -----------------------------------------------------------

    private void request(String op) throws IOException {
        COUNTS.computeIfAbsent(op, k -> new AtomicLong()).incrementAndGet();
        long ms = delays.getOrDefault(op, 0L);
        if (ms > 0) {
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted in a simulated " + op + " request");
            }
        }
    }

    /** Whether this request of {@code op} on {@code key} is one that fails (see the class comment). */
    private boolean fails(String op, String key) {
        if (failRate <= 0 || !failOps.contains(op) || !key.startsWith(failPrefix)) {
            return false;
        }
        long n = SEEN.computeIfAbsent(op + " " + base.getName() + "/" + key, k -> new AtomicLong()).getAndIncrement();
        long h = mix(mix(mix(failSeed ^ op.hashCode()) ^ key.hashCode()) ^ n);
        if ((h >>> 11) * 0x1.0p-53 >= failRate) {
            return false;
        }
        FAILED.incrementAndGet();
        return true;
    }

    private static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    private void maybeFail(String op, String key) throws IOException {
        if (fails(op, key)) {
            throw new IOException("simulated 503 Service Unavailable (SlowDown: please reduce your request rate) "
                + "for " + op + " oss://" + base.getName() + "/" + key);
        }
    }

    /** The object key of {@code p} ("" for the bucket), checked as OSS checks keys. */
    private String key(Path p) throws IOException {
        String k = makeQualified(p).toUri().getPath();
        while (k.startsWith("/")) {
            k = k.substring(1);
        }
        while (k.endsWith("/")) {
            k = k.substring(0, k.length() - 1);
        }
        if (k.getBytes(StandardCharsets.UTF_8).length > 1023) {
            throw new IOException("object key longer than 1023 bytes: oss://" + base.getName() + "/" + k);
        }
        for (String part : k.isEmpty() ? new String[0] : k.split("/", -1)) {
            if (part.isEmpty() || part.equals(".") || part.equals("..") || part.equals(MARKER)
                || part.indexOf('\\') >= 0 || part.getBytes(StandardCharsets.UTF_8).length > 255) {
                throw new IOException("object key not supported: '" + k + "' (empty, '.', '..', '\\', "
                    + "or a segment over 255 bytes)");
            }
        }
        return k;
    }

    private File local(String key) {
        return key.isEmpty() ? base : new File(base, key);
    }

    private Path path(String key) {
        return new Path(uri.toString() + "/" + key);
    }

    private boolean isObject(String key) {
        return !key.isEmpty() && local(key).isFile();
    }

    /** Whether any key (an object or a marker) starts with {@code key/}. */
    private boolean isPrefix(String key) {
        if (key.isEmpty()) {
            return true;
        }
        String[] entries = local(key).list();
        if (entries == null) {
            return false;
        }
        for (String e : entries) {
            File f = new File(local(key), e);
            if (f.isFile() || isPrefix(key + "/" + e)) {
                return true;
            }
        }
        return false;
    }

    private FileStatus fileStatus(String key, File f) {
        return new ObjectStatus(f, path(key));
    }

    /**
     * An object's status, carrying its ETag as OSS gives it with every HEAD and LIST entry (the
     * hex MD5 of the bytes of an object written in one PUT), through Hadoop's {@link EtagSource}.
     * Computed when asked for.
     */
    static final class ObjectStatus extends FileStatus implements EtagSource {
        private static final long serialVersionUID = 1L;
        private final File file;

        ObjectStatus(File f, Path p) {
            super(f.length(), false, 1, BLOCK_SIZE, f.lastModified(), p);
            file = f;
        }

        @Override
        public String getEtag() {
            try {
                byte[] digest = MessageDigest.getInstance("MD5").digest(Files.readAllBytes(file.toPath()));
                StringBuilder hex = new StringBuilder("\"");
                for (byte b : digest) {
                    hex.append(String.format("%02X", b));
                }
                return hex.append('"').toString();
            } catch (IOException | NoSuchAlgorithmException e) {
                return null;
            }
        }
    }

    private FileStatus dirStatus(String key) {
        return new FileStatus(0, true, 1, 0, 0, path(key));
    }

    /** getFileStatus without the exception: a HEAD of the object, then a LIST of the prefix. */
    private FileStatus probe(String key) throws IOException {
        if (key.isEmpty()) {
            return dirStatus(key);
        }
        request("head");
        maybeFail("head", key);
        File f = local(key);
        if (f.isFile()) {
            return fileStatus(key, f);
        }
        request("list");
        maybeFail("list", key);
        return isPrefix(key) ? dirStatus(key) : null;
    }

    /** Every key under {@code key/} in key order: objects, and markers as "dir/". */
    private List<String> keysUnder(String key) throws IOException {
        List<String> keys = new ArrayList<>();
        File dir = local(key);
        if (dir.isDirectory()) {
            java.nio.file.Path start = dir.toPath();
            try (Stream<java.nio.file.Path> walk = Files.walk(start)) {
                walk.filter(Files::isRegularFile).forEach(f -> {
                    String rel = start.relativize(f).toString();
                    String k = key.isEmpty() ? rel : key + "/" + rel;
                    keys.add(k.endsWith(MARKER) ? k.substring(0, k.length() - MARKER.length()) : k);
                });
            }
        }
        Collections.sort(keys);
        return keys;
    }

    private void pages(int entries) throws IOException {
        for (int i = 0; i == 0 || i < entries; i += pageSize) {
            request("list");
        }
    }

    /** Remove empty local directories from {@code key} up, as the prefix no longer exists. */
    private void prune(String key) {
        for (String k = key; !k.isEmpty(); k = parent(k)) {
            String[] left = local(k).list();
            if (left == null || left.length > 0 || !local(k).delete()) {
                return;
            }
        }
    }

    private static String parent(String key) {
        int i = key.lastIndexOf('/');
        return i < 0 ? "" : key.substring(0, i);
    }

    private void checkAncestorsAreNotObjects(String key) throws IOException {
        for (String k = parent(key); !k.isEmpty(); k = parent(k)) {
            if (isObject(k)) {
                throw new ParentNotDirectoryException("the emulator cannot hold key '" + key
                    + "' next to the object '" + k + "'");
            }
        }
    }

    private interface Placement {
        void run() throws IOException;
    }

    /** Create {@code target}'s parent directories, then {@code place} it there: again when a
     *  concurrent {@link #prune} removed a parent in between, or while they were being created. */
    private static void place(File target, Placement place) throws IOException {
        for (int attempt = 1; ; attempt++) {
            try {
                Files.createDirectories(target.getParentFile().toPath());
                place.run();
                return;
            } catch (NoSuchFileException e) {
                if (attempt == 5) {
                    throw e;
                }
            }
        }
    }

    /** Write {@code source} as the object {@code key}, visible at once and whole. */
    private void publish(File source, String key, boolean move) throws IOException {
        checkAncestorsAreNotObjects(key);
        File target = local(key);
        if (target.isDirectory()) {
            if (isPrefix(key)) {
                throw new FileAlreadyExistsException("oss://" + base.getName() + "/" + key + " is a directory");
            }
            target.delete();
        }
        File staged = source;
        if (!move) {
            staged = File.createTempFile("copy-", ".tmp", staging);
            Files.copy(source.toPath(), staged.toPath(), StandardCopyOption.REPLACE_EXISTING);
        }
        File from = staged;
        place(target, () -> Files.move(from.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING,
            StandardCopyOption.ATOMIC_MOVE));
    }

    /** The local file of a key from {@link #keysUnder}: an object, or the marker of "dir/". */
    private File fileOfKey(String k) {
        return k.endsWith("/") ? new File(local(k.substring(0, k.length() - 1)), MARKER) : local(k);
    }

    // ---- the FileSystem API ----------------------------------------------------------------

    @Override
    public FileStatus getFileStatus(Path p) throws IOException {
        FileStatus st = probe(key(p));
        if (st == null) {
            throw new FileNotFoundException("no such object or prefix: " + p);
        }
        return st;
    }

    @Override
    public FSDataInputStream open(Path p, int bufferSize) throws IOException {
        String k = key(p);
        request("open");
        maybeFail("open", k);
        File f = local(k);
        if (!f.isFile()) {
            throw new FileNotFoundException((isPrefix(k) ? "is a directory: " : "no such object: ") + p);
        }
        long cutAt = fails("read", k) ? f.length() / 2 : -1;
        return new FSDataInputStream(new BufferedFSInputStream(new GetStream(f, cutAt), bufferSize));
    }

    @Override
    public FSDataOutputStream create(Path p, FsPermission permission, boolean overwrite, int bufferSize,
                                     short replication, long blockSize, Progressable progress) throws IOException {
        String k = key(p);
        if (k.isEmpty() || isPrefix(k)) {
            throw new FileAlreadyExistsException("is a directory: " + p);
        }
        if (!overwrite) {
            request("head");
            if (isObject(k)) {
                throw new FileAlreadyExistsException("object exists: " + p);
            }
        }
        checkAncestorsAreNotObjects(k);
        File tmp = File.createTempFile("put-", ".tmp", staging);
        return new FSDataOutputStream(new PutStream(tmp, k), statistics);
    }

    @Override
    public FSDataOutputStream createNonRecursive(Path p, FsPermission permission, boolean overwrite,
                                                 int bufferSize, short replication, long blockSize,
                                                 Progressable progress) throws IOException {
        return create(p, permission, overwrite, bufferSize, replication, blockSize, progress);
    }

    @Override
    public FSDataOutputStream append(Path p, int bufferSize, Progressable progress) throws IOException {
        throw new UnsupportedOperationException("append: objects are written whole");
    }

    @Override
    public boolean rename(Path src, Path dst) throws IOException {
        String s = key(src);
        String d = key(dst);
        FileStatus from = s.isEmpty() ? null : probe(s);
        if (from == null) {
            return false;
        }
        if (s.equals(d)) {
            return from.isFile();
        }
        if (from.isDirectory() && (d + "/").startsWith(s + "/")) {
            return false;
        }
        FileStatus to = probe(d);
        if (to != null) {
            if (to.isFile()) {
                return false;
            }
            d = d.isEmpty() ? src.getName() : d + "/" + src.getName();
            if (probe(d) != null) {
                return false;
            }
        }
        if (from.isFile()) {
            moveObject(s, d);
        } else {
            List<String> keys = keysUnder(s);
            pages(keys.size());
            long moved = 0;
            for (String k : keys) {
                if (failRenameAfter >= 0 && moved >= failRenameAfter) {
                    throw new IOException("simulated failure after " + moved + " of " + keys.size()
                        + " objects of a rename of " + src);
                }
                moveObject(k, d + k.substring(s.length()));
                moved++;
            }
        }
        prune(parent(s));
        return true;
    }

    /** One object of a rename: a copy request, then a delete request. */
    private void moveObject(String from, String to) throws IOException {
        request("rename");
        File source = fileOfKey(from);
        File target = fileOfKey(to);
        if (to.endsWith("/")) {
            place(target, () -> Files.copy(source.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING));
        } else {
            publish(source, to, false);
        }
        request("delete");
        Files.delete(source.toPath());
        prune(from.endsWith("/") ? from.substring(0, from.length() - 1) : parent(from));
    }

    @Override
    public boolean delete(Path p, boolean recursive) throws IOException {
        String k = key(p);
        if (k.isEmpty()) {
            return false;
        }
        FileStatus st = probe(k);
        if (st == null) {
            return false;
        }
        if (st.isFile()) {
            request("delete");
            Files.delete(local(k).toPath());
            prune(parent(k));
            return true;
        }
        List<String> keys = keysUnder(k);
        pages(keys.size());
        if (!recursive && !(keys.size() == 1 && keys.get(0).equals(k + "/"))) {
            throw new PathIsNotEmptyDirectoryException(p.toString());
        }
        for (int i = 0; i < keys.size(); i++) {
            if (i % pageSize == 0) {
                request("delete");
            }
            Files.deleteIfExists(fileOfKey(keys.get(i)).toPath());
        }
        try (Stream<java.nio.file.Path> walk = Files.walk(local(k).toPath())) {
            walk.sorted(Collections.reverseOrder()).forEach(f -> f.toFile().delete());
        }
        prune(parent(k));
        return true;
    }

    @Override
    public boolean mkdirs(Path p, FsPermission permission) throws IOException {
        String k = key(p);
        FileStatus st = probe(k);
        if (st != null) {
            if (st.isFile()) {
                throw new FileAlreadyExistsException("an object exists at " + p);
            }
            return true;
        }
        checkAncestorsAreNotObjects(k);
        request("create");
        File marker = new File(local(k), MARKER);
        place(marker, () -> Files.write(marker.toPath(), new byte[0]));
        return true;
    }

    @Override
    public FileStatus[] listStatus(Path p) throws IOException {
        String k = key(p);
        File dir = local(k);
        List<FileStatus> out = new ArrayList<>();
        String[] names = dir.isDirectory() ? dir.list() : null;
        int entries = 0;
        if (names != null) {
            List<String> sorted = new ArrayList<>();
            for (String n : names) {
                File f = new File(dir, n);
                String child = k.isEmpty() ? n : k + "/" + n;
                if (n.equals(MARKER) || f.isFile() || isPrefix(child)) {
                    sorted.add(f.isDirectory() ? n + "/" : n);
                }
            }
            Collections.sort(sorted);
            entries = sorted.size();
            for (String n : sorted) {
                if (n.endsWith("/")) {
                    out.add(dirStatus(k.isEmpty() ? n.substring(0, n.length() - 1) : k + "/" + n.substring(0, n.length() - 1)));
                } else if (!n.equals(MARKER)) {
                    String child = k.isEmpty() ? n : k + "/" + n;
                    out.add(fileStatus(child, new File(dir, n)));
                }
            }
        }
        pages(entries);
        maybeFail("list", k);
        if (entries == 0 && !k.isEmpty()) {
            request("head");
            if (isObject(k)) {
                return new FileStatus[] {fileStatus(k, local(k))};
            }
            throw new FileNotFoundException("no such object or prefix: " + p);
        }
        return out.toArray(new FileStatus[0]);
    }

    @Override
    public RemoteIterator<LocatedFileStatus> listFiles(Path p, boolean recursive) throws IOException {
        if (!recursive) {
            return super.listFiles(p, false);
        }
        String k = key(p);
        List<String> keys = keysUnder(k);
        if (!keys.isEmpty() || k.isEmpty()) {
            return new FlatListing(k, keys, false);
        }
        request("list");
        request("head");
        if (!isObject(k)) {
            throw new FileNotFoundException("no such object or prefix: " + p);
        }
        return new FlatListing(k, Collections.singletonList(k), true);
    }

    /** A flat listing that asks for each page of keys when the caller gets to it. */
    private final class FlatListing implements RemoteIterator<LocatedFileStatus> {
        private final List<String> keys;
        private final String prefix;
        private int next;
        private int pagesFetched;

        FlatListing(String prefix, List<String> keys, boolean fetched) throws IOException {
            this.prefix = prefix;
            this.keys = keys;
            pagesFetched = fetched ? Integer.MAX_VALUE : 0;
            fetchPageOf(0);
        }

        private void fetchPageOf(int index) throws IOException {
            int needed = Math.min(index, Math.max(keys.size() - 1, 0)) / pageSize + 1;
            while (pagesFetched < needed) {
                request("list");
                maybeFail("list", prefix);
                pagesFetched++;
            }
        }

        @Override
        public boolean hasNext() throws IOException {
            fetchPageOf(next);
            while (next < keys.size() && keys.get(next).endsWith("/")) {
                fetchPageOf(++next);
            }
            return next < keys.size();
        }

        @Override
        public LocatedFileStatus next() throws IOException {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            String k = keys.get(next++);
            FileStatus st = fileStatus(k, local(k));
            return new LocatedFileStatus(st, getFileBlockLocations(st, 0, st.getLen()));
        }
    }

    /** An object's bytes while a writer has it open: a local temporary file until close. */
    private final class PutStream extends OutputStream {
        private final File tmp;
        private final String key;
        private final OutputStream out;
        private boolean closed;

        PutStream(File tmp, String key) throws IOException {
            this.tmp = tmp;
            this.key = key;
            this.out = new BufferedOutputStream(new FileOutputStream(tmp), 1 << 16);
        }

        @Override
        public void write(int b) throws IOException {
            out.write(b);
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
        }

        @Override
        public void flush() throws IOException {
            out.flush();
        }

        @Override
        public synchronized void close() throws IOException {
            if (closed) {
                return;
            }
            closed = true;
            out.close();
            try {
                request("create");
                publish(tmp, key, true);
            } finally {
                tmp.delete();
            }
        }
    }

    /** A GET of an object: its bytes, seekable; with {@code cutAt} >= 0, the connection is reset
     *  when the reader gets there. */
    private static final class GetStream extends FSInputStream {
        private final RandomAccessFile file;
        private final long cutAt;

        GetStream(File f, long cutAt) throws IOException {
            file = new RandomAccessFile(f, "r");
            this.cutAt = cutAt;
        }

        private void check(long wanted) throws IOException {
            if (cutAt >= 0 && file.getFilePointer() + wanted > cutAt) {
                throw new SocketException("Connection reset (simulated, after " + file.getFilePointer() + " bytes)");
            }
        }

        @Override
        public void seek(long pos) throws IOException {
            file.seek(pos);
        }

        @Override
        public long getPos() throws IOException {
            return file.getFilePointer();
        }

        @Override
        public boolean seekToNewSource(long targetPos) {
            return false;
        }

        @Override
        public int read() throws IOException {
            check(1);
            return file.read();
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            if (cutAt >= 0 && len > 0) {
                long left = cutAt - file.getFilePointer();
                if (left > 0) {
                    return file.read(b, off, (int) Math.min(len, left));
                }
                check(len);
            }
            return file.read(b, off, len);
        }

        @Override
        public int available() throws IOException {
            return (int) Math.min(Integer.MAX_VALUE, file.length() - file.getFilePointer());
        }

        @Override
        public void close() throws IOException {
            file.close();
        }
    }
}

// SPDX-License-Identifier: Apache-2.0
/*
 * fscrypt-tool: the few fscrypt v2 operations the iceblk e2e guest needs
 * (Debian 12 has no fscryptctl). Static, so the same binary also runs on the
 * host (the `gen` command, and `find` for the plaintext check of an image).
 *
 *   fscrypt-tool add-key MNT KEYFILE          add a raw 64-byte master key (KEYFILE holds
 *                                             128 hex characters); prints its identifier
 *   fscrypt-tool set-policy DIR ID CONTENTS FILENAMES [FLAG...]
 *                                             v2 policy; CONTENTS aes-256-xts | aes-128-cbc,
 *                                             FILENAMES aes-256-cts | aes-128-cts,
 *                                             FLAG iv_ino_lblk_64 | iv_ino_lblk_32 | direct_key | pad_N
 *   fscrypt-tool get-policy DIR               prints "v2 CONTENTS FILENAMES flags=0xNN ID"
 *   fscrypt-tool key-status MNT ID            prints present | absent | incompletely-removed
 *   fscrypt-tool remove-key MNT ID            removes the key (for this user)
 *   fscrypt-tool gen TOKEN NAME SIZE [OFFSET] writes SIZE bytes of 64-byte records
 *                                             "ICEBLK-PT TOKEN NAME <offset>" to stdout, unique
 *                                             per position; OFFSET (default 0) starts the count
 *   fscrypt-tool find FILE NEEDLE             prints how often NEEDLE occurs in FILE
 *
 * The key bytes are read from a file, never from the command line, and never
 * printed. Exit status: 0 ok, 1 failure (message on stderr), 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fscrypt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_BYTES 64

static int usage(void)
{
	fprintf(stderr,
		"usage: fscrypt-tool add-key MNT KEYFILE | set-policy DIR ID CONTENTS FILENAMES [FLAG...] |\n"
		"       get-policy DIR | key-status MNT ID | remove-key MNT ID |\n"
		"       gen TOKEN NAME SIZE [OFFSET] | find FILE NEEDLE\n");
	return 2;
}

static int fail(const char *what, const char *arg)
{
	fprintf(stderr, "fscrypt-tool: %s %s: %s\n", what, arg, strerror(errno));
	return 1;
}

static void wipe(void *p, size_t n)
{
	explicit_bzero(p, n);
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parses exactly 2 * n hex digits (trailing whitespace allowed). */
static int parse_hex(const char *s, size_t len, uint8_t *out, size_t n)
{
	size_t i;

	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\r'))
		len--;
	if (len != 2 * n)
		return -1;
	for (i = 0; i < n; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int parse_id(const char *s, uint8_t id[FSCRYPT_KEY_IDENTIFIER_SIZE])
{
	if (parse_hex(s, strlen(s), id, FSCRYPT_KEY_IDENTIFIER_SIZE) != 0) {
		fprintf(stderr, "fscrypt-tool: key identifier must be %d hex characters\n",
			2 * FSCRYPT_KEY_IDENTIFIER_SIZE);
		return -1;
	}
	return 0;
}

static void print_id(const uint8_t *id)
{
	int i;

	for (i = 0; i < FSCRYPT_KEY_IDENTIFIER_SIZE; i++)
		printf("%02x", id[i]);
}

static int cmd_add_key(const char *mnt, const char *keyfile)
{
	/* The argument ends in the raw key: room for it right after the struct. */
	union {
		struct fscrypt_add_key_arg arg;
		uint8_t bytes[sizeof(struct fscrypt_add_key_arg) + KEY_BYTES];
	} u;
	char hex[2 * KEY_BYTES + 8];
	ssize_t n;
	int fd, rc = 1;

	fd = open(keyfile, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("open", keyfile);
	n = read(fd, hex, sizeof(hex));
	close(fd);
	memset(&u, 0, sizeof(u));
	if (n < 0 || parse_hex(hex, (size_t)n, u.arg.raw, KEY_BYTES) != 0) {
		fprintf(stderr, "fscrypt-tool: %s must hold %d hex characters\n", keyfile,
			2 * KEY_BYTES);
		goto out;
	}
	u.arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
	u.arg.raw_size = KEY_BYTES;
	fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		rc = fail("open", mnt);
		goto out;
	}
	if (ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, &u.arg) != 0) {
		rc = fail("FS_IOC_ADD_ENCRYPTION_KEY on", mnt);
		close(fd);
		goto out;
	}
	close(fd);
	print_id(u.arg.key_spec.u.identifier);
	printf("\n");
	rc = 0;
out:
	wipe(hex, sizeof(hex));
	wipe(&u, sizeof(u));
	return rc;
}

struct name {
	const char *name;
	int value;
};

static const struct name contents_modes[] = {
	{ "aes-256-xts", FSCRYPT_MODE_AES_256_XTS },
	{ "aes-128-cbc", FSCRYPT_MODE_AES_128_CBC },
	{ "adiantum", FSCRYPT_MODE_ADIANTUM },
	{ NULL, 0 },
};

static const struct name filenames_modes[] = {
	{ "aes-256-cts", FSCRYPT_MODE_AES_256_CTS },
	{ "aes-128-cts", FSCRYPT_MODE_AES_128_CTS },
	{ "adiantum", FSCRYPT_MODE_ADIANTUM },
	{ NULL, 0 },
};

static const struct name flag_names[] = {
	{ "pad_4", FSCRYPT_POLICY_FLAGS_PAD_4 },
	{ "pad_8", FSCRYPT_POLICY_FLAGS_PAD_8 },
	{ "pad_16", FSCRYPT_POLICY_FLAGS_PAD_16 },
	{ "pad_32", FSCRYPT_POLICY_FLAGS_PAD_32 },
	{ "direct_key", FSCRYPT_POLICY_FLAG_DIRECT_KEY },
	{ "iv_ino_lblk_64", FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64 },
	{ "iv_ino_lblk_32", FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32 },
	{ NULL, 0 },
};

static int lookup(const struct name *t, const char *s, const char *what)
{
	for (; t->name; t++)
		if (strcmp(t->name, s) == 0)
			return t->value;
	fprintf(stderr, "fscrypt-tool: unknown %s '%s'\n", what, s);
	return -1;
}

static const char *name_of(const struct name *t, int v)
{
	for (; t->name; t++)
		if (t->value == v)
			return t->name;
	return "unknown";
}

static int cmd_set_policy(int argc, char **argv)
{
	struct fscrypt_policy_v2 p;
	int contents, filenames, fd, i;

	memset(&p, 0, sizeof(p));
	p.version = FSCRYPT_POLICY_V2;
	if (parse_id(argv[1], p.master_key_identifier) != 0)
		return 1;
	contents = lookup(contents_modes, argv[2], "contents mode");
	filenames = lookup(filenames_modes, argv[3], "filenames mode");
	if (contents < 0 || filenames < 0)
		return 1;
	p.contents_encryption_mode = (uint8_t)contents;
	p.filenames_encryption_mode = (uint8_t)filenames;
	p.flags = FSCRYPT_POLICY_FLAGS_PAD_32;
	for (i = 4; i < argc; i++) {
		int f = lookup(flag_names, argv[i], "flag");

		if (f < 0)
			return 1;
		if (strncmp(argv[i], "pad_", 4) == 0)
			p.flags = (uint8_t)((p.flags & ~FSCRYPT_POLICY_FLAGS_PAD_MASK) | f);
		else
			p.flags |= (uint8_t)f;
	}
	fd = open(argv[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return fail("open", argv[0]);
	if (ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &p) != 0) {
		int rc = fail("FS_IOC_SET_ENCRYPTION_POLICY on", argv[0]);

		close(fd);
		return rc;
	}
	close(fd);
	return 0;
}

static int cmd_get_policy(const char *dir)
{
	struct fscrypt_get_policy_ex_arg arg;
	int fd;

	memset(&arg, 0, sizeof(arg));
	arg.policy_size = sizeof(arg.policy);
	fd = open(dir, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("open", dir);
	if (ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &arg) != 0) {
		int rc = fail("FS_IOC_GET_ENCRYPTION_POLICY_EX on", dir);

		close(fd);
		return rc;
	}
	close(fd);
	if (arg.policy.version != FSCRYPT_POLICY_V2) {
		printf("v%d (not v2)\n", arg.policy.version == 0 ? 1 : arg.policy.version);
		return 0;
	}
	printf("v2 %s %s flags=0x%02x ", name_of(contents_modes, arg.policy.v2.contents_encryption_mode),
	       name_of(filenames_modes, arg.policy.v2.filenames_encryption_mode), arg.policy.v2.flags);
	print_id(arg.policy.v2.master_key_identifier);
	printf("\n");
	return 0;
}

static int key_ioctl(const char *mnt, const char *id, int remove)
{
	struct fscrypt_get_key_status_arg st;
	struct fscrypt_remove_key_arg rm;
	struct fscrypt_key_specifier *spec = remove ? &rm.key_spec : &st.key_spec;
	int fd, r;

	memset(&st, 0, sizeof(st));
	memset(&rm, 0, sizeof(rm));
	spec->type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
	if (parse_id(id, spec->u.identifier) != 0)
		return 1;
	fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return fail("open", mnt);
	r = ioctl(fd, remove ? FS_IOC_REMOVE_ENCRYPTION_KEY : FS_IOC_GET_ENCRYPTION_KEY_STATUS,
		  remove ? (void *)&rm : (void *)&st);
	close(fd);
	if (r != 0)
		return fail(remove ? "FS_IOC_REMOVE_ENCRYPTION_KEY on" : "FS_IOC_GET_ENCRYPTION_KEY_STATUS on",
			    mnt);
	if (remove) {
		if (rm.removal_status_flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY)
			printf("removed, files busy\n");
		else
			printf("removed\n");
		return 0;
	}
	switch (st.status) {
	case FSCRYPT_KEY_STATUS_PRESENT:
		printf("present\n");
		break;
	case FSCRYPT_KEY_STATUS_ABSENT:
		printf("absent\n");
		break;
	case FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED:
		printf("incompletely-removed\n");
		break;
	default:
		printf("status %u\n", st.status);
	}
	return 0;
}

static int parse_u64(const char *s, unsigned long long *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'K': *v <<= 10; end++; break;
	case 'M': *v <<= 20; end++; break;
	case 'G': *v <<= 30; end++; break;
	}
	return *end ? -1 : 0;
}

/* 64-byte records, each naming the run token, the file and its own offset. */
static int cmd_gen(const char *token, const char *name, const char *size_s, const char *off_s)
{
	unsigned long long size, off = 0, pos;
	static char buf[1 << 16];
	size_t fill = 0;

	if (parse_u64(size_s, &size) != 0 || (off_s && parse_u64(off_s, &off) != 0))
		return usage();
	for (pos = 0; pos < size; pos += 64) {
		char rec[80];
		int n = snprintf(rec, sizeof(rec), "ICEBLK-PT %s %s %llu", token, name, off + pos);
		size_t len = size - pos < 64 ? (size_t)(size - pos) : 64;

		if (n < 0)
			return 1;
		if ((size_t)n < 64)
			memset(rec + n, '.', 64 - (size_t)n);
		rec[63] = '\n';
		memcpy(buf + fill, rec, len);
		fill += len;
		if (fill + 64 > sizeof(buf) || pos + 64 >= size) {
			size_t done = 0;

			while (done < fill) {
				ssize_t w = write(1, buf + done, fill - done);

				if (w < 0)
					return fail("write", "stdout");
				done += (size_t)w;
			}
			fill = 0;
		}
	}
	return 0;
}

static int cmd_find(const char *file, const char *needle)
{
	size_t nlen = strlen(needle), count = 0;
	struct stat st;
	const char *p, *end;
	void *map;
	int fd;

	if (nlen == 0)
		return usage();
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("open", file);
	if (fstat(fd, &st) != 0) {
		close(fd);
		return fail("stat", file);
	}
	if (st.st_size == 0) {
		close(fd);
		printf("0\n");
		return 0;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return fail("mmap", file);
	p = map;
	end = p + st.st_size;
	while ((p = memmem(p, (size_t)(end - p), needle, nlen)) != NULL) {
		count++;
		p += nlen;
	}
	munmap(map, (size_t)st.st_size);
	printf("%zu\n", count);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	if (strcmp(argv[1], "add-key") == 0 && argc == 4)
		return cmd_add_key(argv[2], argv[3]);
	if (strcmp(argv[1], "set-policy") == 0 && argc >= 6)
		return cmd_set_policy(argc - 2, argv + 2);
	if (strcmp(argv[1], "get-policy") == 0 && argc == 3)
		return cmd_get_policy(argv[2]);
	if (strcmp(argv[1], "key-status") == 0 && argc == 4)
		return key_ioctl(argv[2], argv[3], 0);
	if (strcmp(argv[1], "remove-key") == 0 && argc == 4)
		return key_ioctl(argv[2], argv[3], 1);
	if (strcmp(argv[1], "gen") == 0 && (argc == 5 || argc == 6))
		return cmd_gen(argv[2], argv[3], argv[4], argc == 6 ? argv[5] : NULL);
	if (strcmp(argv[1], "find") == 0 && argc == 4)
		return cmd_find(argv[2], argv[3]);
	return usage();
}
